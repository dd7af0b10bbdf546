"""Who the devices are: enrollment, certificates from the fleet CA, labels, reported state."""

from __future__ import annotations
