"""The versioned schema registry: subjects ``{tenant}/{provider}/{stream}`` with JSON Schema versions."""
