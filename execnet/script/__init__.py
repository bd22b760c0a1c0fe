"""Scripts that run on remote hosts (socket server and friends)."""
