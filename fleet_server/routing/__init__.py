"""Cloud routing on the server side: policies, prices and cascade evaluation."""
