"""The model catalog: releases and their variants, what the server computes about a pushed
model, which variant each device gets, and the fleet's benchmarks of them."""

from __future__ import annotations
