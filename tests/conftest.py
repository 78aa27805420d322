pytest_plugins = ["amqscale.testing.fixtures"]
