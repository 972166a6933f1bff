"""DP trending counts on the server: the query to the nodes and the accounted trending round."""
