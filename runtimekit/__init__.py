"""Process-level helpers shared by the product (the agent) and the stand-ins (emulators/).

It sits beside both so neither has to import the other: emulators/ never imports the app, and the
app never imports emulators/. It imports nothing from either.
"""
