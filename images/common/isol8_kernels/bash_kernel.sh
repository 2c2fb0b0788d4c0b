# The bash shell of a stateful session: every cell is eval'd in this one shell.
#
# Started by the launcher (isol8_launcher/kernel.py) as the code user. A cell comes
# on fd 3 as its text ending in a NUL byte, the request's variables first as
# `local -x` lines (eval'd in __isol8_cell, they are the cell's only);
# after it, one JSON line {"type":"done",...,"exitCode":N} goes to fd 4. The
# working directory, variables, functions and aliases persist between cells.
#
# SIGINT (the launcher's interrupt at the deadline) stops the foreground command
# and returns from the running cell (from the innermost function, when the cell
# is inside one of its own); between cells it is ignored. `exit` ends the shell:
# the next cell says stateLost.

# The pipes move to descriptors the cell's commands do not inherit by accident.
# (5, the launcher's acknowledgements of displays, is not used: bash has no displays.)
exec {__isol8_cells}<&3 {__isol8_events}>&4 3<&- 4>&- 5<&-
readonly __isol8_cells __isol8_events

__isol8_cell() {
  trap 'trap "" INT; return 130' INT
  eval "$1"
}

trap '' INT
printf '{"type":"ready"}\n' >&"$__isol8_events"
__isol8_id=0
while IFS= read -r -d '' -u "$__isol8_cells" __isol8_code; do
  __isol8_id=$((__isol8_id + 1))
  __isol8_cell "$__isol8_code"
  __isol8_status=$?
  trap '' INT
  if [ "$__isol8_status" -eq 0 ]; then __isol8_state=ok; else __isol8_state=error; fi
  printf '{"type":"done","id":%d,"status":"%s","exitCode":%d,"value":null,"exception":null}\n' \
    "$__isol8_id" "$__isol8_state" "$__isol8_status" >&"$__isol8_events"
done
