"""ringleader's data path: RESP server, command table, ring, routes and the library client."""

__version__ = "0.1.0"
