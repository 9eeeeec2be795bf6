"""Numbered SQL migrations, shipped inside the installed package as moesifasgi.migrations."""
