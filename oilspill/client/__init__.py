"""What runs on the user's side: the async API client and the submit/status/fetch commands."""
