"""A tiny remote-code dual encoder standing in for the project's models in the Hub-publishing tests."""
