"""Every text p4sim prints, in one place, worded as real p4 words it (docs/p4-behaviour.md).

Messages that p4 prints in two forms (`File(s) up-to-date.` without a file argument,
`//a/... - file(s) up-to-date.` with one) are stored in the bare form; `per_arg` builds the other.
"""

from __future__ import annotations


def per_arg(message: str, arg: str | None) -> str:
    return message if arg is None else f"{arg} - {message[0].lower()}{message[1:]}"


# Connection and authentication
NO_SIM_SERVER = (
    "Perforce client error:\n\tConnect to server failed; check $P4PORT.\n"
    "\tp4sim: no server in {root} (create one with `p4sim init {root}` or `p4sim seed DIR`)"
)
CONNECT_FAILED = (
    "Perforce client error:\n\tConnect to server failed; check $P4PORT.\n"
    "\tTCP connect to {port} failed.\n\tconnect: {port}: Connection refused"
)
PASSWORD_UNSET = "Perforce password (P4PASSWD) invalid or unset."
SESSION_EXPIRED = "Your session has expired, please login again."
PASSWORD_INVALID = "Password invalid."
LOGIN_NOT_NEEDED = "'login' not necessary, no password set for this user."
ENTER_PASSWORD = "Enter password: "
LOGGED_IN = "User {user} logged in."
TICKET_EXPIRES = "User {user} ticket expires in {hours} hours {minutes} minutes."

# Command line
UNKNOWN_COMMAND = "Unknown command.  Try 'p4 help' for info."
INVALID_OPTION = "Invalid option: {option}."
WRONG_ARGS = "Missing/wrong number of arguments."
USAGE = "Usage: {usage}"
NO_INTERACTIVE = "{command}: p4sim has no interactive mode; {hint}"
P4_USAGE = "Usage: p4 [ -p port -u user -c client -P password -d dir -H host -s -ztag -G -q -x file ] command [arg ...]"

# Specs
CLIENT_UNKNOWN = "Client '{name}' unknown - use 'client' command to create it."
BRANCH_UNKNOWN = "Branch '{name}' unknown - use 'branch' command to create it."
SPEC_SAVED = "{kind} {name} saved."
SPEC_NOT_CHANGED = "{kind} {name} not changed."
SPEC_DELETED = "{kind} {name} deleted."
SPEC_FIELD_MISSING = "Error in {kind} specification.\nMissing required field '{field}'."
CHANGE_CREATED = "Change {change} created."
CHANGE_CREATED_FILES = "Change {change} created with {count} open file(s)."
CHANGE_UPDATED = "Change {change} updated."
CHANGE_DELETED = "Change {change} deleted."
CHANGE_UNKNOWN = "Change {change} unknown."
CHANGE_COMMITTED = "Change {change} is already committed."
CHANGE_HAS_FILES = "Change {change} has {count} open file(s) associated with it and can't be deleted."
CHANGE_HAS_SHELVED = "Change {change} has shelved files associated with it and can't be deleted."
CHANGE_OTHER_CLIENT = "Change {change} belongs to client {client}."
CHANGE_OTHER_USER = "Change {change} belongs to user {user}."

# File arguments (bare forms; see per_arg)
NO_SUCH_FILES = "No such file(s)."
NOT_IN_VIEW = "File(s) not in client view."
NOT_OPENED = "File(s) not opened on this client."
UP_TO_DATE = "File(s) up-to-date."
NO_RESOLVE = "No file(s) to resolve."
ALL_INTEGRATED = "All revision(s) already integrated."
NOT_ON_CLIENT = "File(s) not on client."

# add / edit / delete / revert / reopen / opened
OPENED_FOR = "{depot}#{rev} - opened for {action}"
CANT_ADD_EXISTING = "{depot} - can't add existing file"
CURRENTLY_OPENED = "{depot}#{rev} - currently opened for {action}"
WILDCARD_NAME = "Can't add filenames with wildcards [@#%*] in them.\nUse -f option to force add."
REVERTED = "{depot}#{rev} - was {action}, reverted"
ABANDONED = "{depot}#{rev} - was {action}, abandoned"
REOPENED = "{depot}#{rev} - reopened; {change}"
OPENED_LINE = "{depot}#{rev} - {action} {change} ({type})"

# sync
SYNC_LINE = "{depot}#{rev} - {what} {local}"
SYNC_REFRESH = "{depot}#{rev} - refreshing {local}"
SYNC_OPENED = "{depot}#{rev} - is opened and not being changed"
MUST_RESOLVE_REV = "{depot} - must resolve #{rev} before submitting"
CANT_CLOBBER = "Can't clobber writable file {local}"

# integrate
INTEGRATE_LINE = "{target}#{rev} - {how} {source}{revs}"
ALREADY_OPENED = "{target} - can't integrate (already opened on this client)"
NO_TARGET_IN_BRANCH = "No target file(s) in branch view."

# resolve
MERGING = "{local} - merging {source}{revs}"
VS = "{local} - vs {source}#{rev}"
RESOLVED = "{client_file} - {how} {source}"
RESOLVE_SKIPPED = "{client_file} - resolve skipped."

# shelve / unshelve
SHELVING = "Shelving files for change {change}."
SHELVED_FILE = "{action} {depot}#{rev}"
SHELVED = "Change {change} files shelved."
SHELF_DELETED = "Shelved change {change} deleted."
SHELF_FILES_DELETED = "Shelved change {change} files deleted."
NO_FILES_TO_SHELVE = "No files to shelve."
ALREADY_SHELVED = "{depot} - already shelved, use -f to update."
NO_SHELVED_TO_DELETE = "No shelved files in changelist to delete."
NO_SHELVED_FILES = "Change {change} does not contain shelved files."
UNSHELVED = "{depot}#{rev} - unshelved, opened for {action}"
CANT_UNSHELVE = "{depot} - can't unshelve (already opened for {action})"
TRIGGER_FAILED = "'{name}' validation failed: {output}"
SHELVE_VALIDATION = "Shelve validation failed -- fix problems then try again."
SUBMIT_VALIDATION = "Submit validation failed -- fix problems then try again."

# submit
SUBMITTING = "Submitting change {change}."
LOCKING = "Locking {count} files ..."
SUBMITTED_FILE = "{action} {depot}#{rev}"
SUBMITTED = "Change {change} submitted."
RENAMED_SUBMITTED = "Change {change} renamed change {new} and submitted."
MERGES_PENDING = "Merges still pending -- use 'resolve' to merge files."
MUST_RESOLVE = "{depot} - must resolve before submitting"
SUBMIT_FAILED = "Submit failed -- fix problems above then use 'p4 submit -c {change}'."
NO_FILES_TO_SUBMIT = "No files to submit."
NO_FILES_TO_SUBMIT_DEFAULT = "No files to submit from the default changelist."
OPEN_FOR_READ_FAILED = "open for read: {local}: No such file or directory"
SUBMIT_ABORTED = "Submit aborted -- fix problems then use 'p4 submit -c {change}'."
HAS_SHELVED = "Change {change} has shelved files --  cannot submit."
OUT_OF_DATE = "Out of date files must be resolved or reverted."

# history
CHANGES_LINE = "Change {change} on {date} by {user}@{client}{pending}"
CHANGES_SHORT = "{header} '{desc}'"
DESCRIBE_HEADER = "Change {change} by {user}@{client} on {date}{pending}"
