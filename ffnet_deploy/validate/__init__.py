"""Parity validation: metrics, tolerance profiles, the one comparison engine, localization, reports.

The export-time parity gate and ``ffnet-deploy validate`` both run :mod:`ffnet_deploy.validate.engine`; they differ
only in their inputs (synthetic tensors vs a data set from :mod:`ffnet_deploy.data`).
"""
