"""Hosts the indexed FunctionApp on this machine, standing in for Azure Functions Core Tools."""
