"""Local backends: a SQLite file under the state directory and a child process."""
