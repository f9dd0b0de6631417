"""The qcompile command line."""
