"""Secure aggregation with distributed noise, the server's side: the round and its message stages."""
