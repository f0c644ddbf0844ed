"""The FFNet model family: variant configs, layers, token mixers, the network, reparameterization, checkpoints.

Import from the modules themselves (``ffnet_deploy.models.config``, ``ffnet_deploy.models.ffnet``, ...); the
package root :mod:`ffnet_deploy` re-exports the public entry points.
"""
