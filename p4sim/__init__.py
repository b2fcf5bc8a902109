# typing.TYPE_CHECKING without importing typing, which would add to every p4 invocation's
# start-up; mypy treats any name TYPE_CHECKING as true. Modules import it from here.
TYPE_CHECKING = False
