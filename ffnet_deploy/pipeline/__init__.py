"""``ffnet-deploy pipeline``: checkpoint to deployable report in one command."""
