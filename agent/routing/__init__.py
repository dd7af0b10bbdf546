"""Cloud routing on the device: policies, guards, the cloud client and the router."""
