"""The ground floor: what every other package may import and what imports nothing of the project.

Errors a user can fix, the strict config base, atomic writes, completion markers, hashing,
file names shared between writers and readers, and the console. `data_prep`, `training`,
`launch` and the rest of `pipeline` stand on it; it stands on third-party packages only.
"""
