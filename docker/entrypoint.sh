#!/bin/sh
# shepherd's container entrypoint: `exec shepherd "$@"`, after turning file secrets into the
# environment variables shepherd reads. For every variable SHEPHERD_<NAME>_FILE=/path, it exports
# SHEPHERD_<NAME> with the file's content (trailing newlines dropped) and unsets the _FILE
# variable, the convention of the postgres image. Compose's secrets are files under /run/secrets:
#   SHEPHERD_DB_FILE=/run/secrets/shepherd_db_url   ->  SHEPHERD_DB
#   SHEPHERD_TRITON_API_KEY_FILE=...                ->  SHEPHERD_TRITON_API_KEY
# A variable given both ways, or a file that cannot be read, stops the start (exit 20, bad settings).
set -eu

for file_var in $(env | sed -n 's/^\(SHEPHERD_[A-Z0-9_]*\)_FILE=.*/\1_FILE/p'); do
    var="${file_var%_FILE}"
    eval "path=\${$file_var}"
    if eval "[ -n \"\${$var+set}\" ]"; then
        echo "error: both $var and $file_var are set; give one" >&2
        exit 20
    fi
    if [ ! -r "$path" ]; then
        echo "error: $file_var names $path, which cannot be read" >&2
        exit 20
    fi
    value="$(cat "$path")"
    export "$var=$value"
    unset "$file_var"
done

exec shepherd "$@"
