"""Stores and controllers shared by the edge and the container, and the ``ocedge`` CLI."""
