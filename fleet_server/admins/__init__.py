"""Named admins: per-person tokens, roles, revocation, and the bootstrap token's retirement."""
