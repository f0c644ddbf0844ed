"""The FFNet model family: variant configs, layers, token mixers, the network, reparameterization, checkpoints.

Import from the modules themselves (``ffnet_deploy.models.ffnet``, ``ffnet_deploy.models.checkpoint``, ...); the
package root :mod:`ffnet_deploy` re-exports the public entry points.
"""
