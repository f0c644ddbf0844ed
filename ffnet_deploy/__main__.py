from ffnet_deploy.cli import entry

entry()
