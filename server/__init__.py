"""The server side: the Flower ServerApp, the FedAvg strategy, federation privacy and results."""
