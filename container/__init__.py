"""What runs in the container image: opencode web, its workspace, and its lifecycle."""
