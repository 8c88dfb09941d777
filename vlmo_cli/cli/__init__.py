"""Thin Typer layer over the library: parse arguments, call library functions, print results."""
