"""The client side: local DP-SGD with Opacus, node data, and the Flower ClientApp."""
