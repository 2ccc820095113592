"""loratk's own commands: name -> "module:attribute" of its click command.

It lives below both the CLI, which imports a command only when it is used, and the plugin manager,
which refuses a plugin command that would replace one of these; neither imports the other for it.
Only commands that work are listed.
"""

COMMANDS = {
    "train": "loratk.cli.train:train",
    "recipes": "loratk.cli.recipes:recipes",
    "plugins": "loratk.cli.plugins:plugins",
    "inspect-modules": "loratk.cli.inspect_modules:inspect_modules",
    "estimate-memory": "loratk.cli.estimate_memory:estimate_memory",
    "generate": "loratk.cli.generate:generate",
    "merge": "loratk.cli.merge:merge",
    "export": "loratk.cli.export:export",
}
