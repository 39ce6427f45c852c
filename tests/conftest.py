pytest_plugins = ["tests.support.redis", "tests.support.database", "tests.support.smtp"]
