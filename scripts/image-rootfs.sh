#!/bin/sh
# Run inside the Dockerfile's build stage (Debian, python3 from apt, binutils): slim VENV, then copy
# into ROOTFS the least that VENV's Python needs, for a `FROM scratch` image. Debian's python3 package
# on a slim base costs ~125 MB before any site-packages; ROOTFS is ~43 MB.
#
# VENV loses what never runs: pip and setuptools (install-time only), type stubs, the packages' own
# test suites, and the symbols of their extension modules (kept by some wheels, megabytes each).
# Bytecode stays: without it every start (the restore init container's too) would recompile the
# SDKs, about a second of CPU each, on a read-only filesystem that cannot cache the result. With
# --sourceless, third-party modules keep only their bytecode (as X.pyc where X.py was), which halves
# what they weigh; a traceback through them then shows file and line but not the line's text.
# Lifeboat's own modules keep their source.
#
# ROOTFS gets:
#   - the interpreter and its standard library, without tests, tk, idle, 2to3, pip's bootstrap,
#     distutils and the build configuration;
#   - every shared library the interpreter, its extension modules, VENV's extension modules, sh and
#     cat link, found by ldd (an unresolved one fails the build, before the image ships);
#   - sh and cat (the restore Job's wrapper), the CA bundle, and passwd/group naming uid 65532.
# Usage: image-rootfs.sh [--sourceless] ROOTFS VENV
set -eu
sourceless=false
if [ "$1" = --sourceless ]; then sourceless=true; shift; fi
root=$1
venv=$2

"$venv/bin/pip" uninstall --quiet --yes pip setuptools
find "$venv" -depth \( -name '*.pyi' -o -name tests -type d \) -exec rm -rf {} +
# Not the libraries auditwheel grafted (*.libs/) nor the modules it pointed at them (an RPATH): strip
# breaks the layout patchelf left them ("ELF load command address/offset not page-aligned").
find "$venv" -type f -name '*.so*' ! -path '*.libs/*' | while read -r so; do
  readelf -d "$so" | grep -q -e '(RPATH)' -e '(RUNPATH)' || strip --strip-unneeded "$so"
done
if $sourceless; then
  # -P: the working directory (the build's source tree, with its operator/ folder) stays off sys.path.
  "$venv/bin/python" -P - "$venv" <<'PY'
import pathlib, sys, sysconfig
site = pathlib.Path(sysconfig.get_paths(vars={"base": sys.argv[1], "platbase": sys.argv[1]})["purelib"])
for pyc in list(site.rglob("__pycache__/*.pyc")):
    module, tag = pyc.name.split(".", 1)
    source = pyc.parent.parent / f"{module}.py"
    # Plain bytecode of this interpreter only; Lifeboat's own modules keep their source.
    ours = pyc.relative_to(site).parts[0] == "lifeboat"
    if ours or tag != f"{sys.implementation.cache_tag}.pyc" or not source.exists():
        continue
    pyc.rename(source.with_suffix(".pyc"))
    source.unlink()
PY
fi

python=$(readlink -f /usr/bin/python3)  # /usr/bin/python3.X
version=$(basename "$python")

mkdir -p "$root/usr/bin" "$root/usr/lib" "$root/usr/lib64" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
# Debian's merged /usr: the dynamic loader is asked for as /lib64/..., sh as /bin/sh.
ln -s usr/bin "$root/bin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"

cp -a "$python" "$root/usr/bin/"
ln -s "$version" "$root/usr/bin/python3"
cp -aL /bin/dash "$root/usr/bin/sh"
cp -aL /bin/cat "$root/usr/bin/cat"
# Debian's sitecustomize.py is a symlink into /etc.
cp -a "/etc/$version" "$root/etc/"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"

# Extension modules whose libraries (ncurses, readline, gdbm, ...) the agent never loads, and test ones.
tar -C /usr/lib -c \
  --exclude="$version/test" --exclude="$version/idlelib" --exclude="$version/tkinter" \
  --exclude="$version/turtledemo" --exclude="$version/turtle.py" --exclude="$version/lib2to3" \
  --exclude="$version/ensurepip" --exclude="$version/pydoc_data" --exclude="$version/distutils" \
  --exclude="$version/config-*" --exclude="$version/site-packages" --exclude="$version/dist-packages" \
  --exclude='lib-dynload/_test*' --exclude='lib-dynload/_ctypes_test*' --exclude='lib-dynload/xx*' \
  --exclude='lib-dynload/_xx*' --exclude='lib-dynload/_curses*' --exclude='lib-dynload/readline*' \
  --exclude='lib-dynload/_dbm*' --exclude='lib-dynload/_gdbm*' --exclude='lib-dynload/nis*' \
  --exclude='lib-dynload/ossaudiodev*' --exclude='lib-dynload/_tkinter*' \
  "$version" | tar -C "$root/usr/lib" -x

# Every ELF file the image will load, then each library ldd resolves for it, copied under its real
# directory (/lib/x86_64-linux-gnu is /usr/lib/x86_64-linux-gnu) and the name it is asked for.
elves=$(mktemp)
{ echo "$python"; echo /bin/dash; echo /bin/cat
  find "$root/usr/lib/$version/lib-dynload" "$venv" -type f -name '*.so*'
} >"$elves"
missing=$(xargs ldd <"$elves" 2>/dev/null | grep 'not found' || true)
if [ -n "$missing" ]; then
  echo "unresolved shared libraries:" >&2
  echo "$missing" >&2
  exit 1
fi
xargs ldd <"$elves" 2>/dev/null \
  | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' \
  | sort -u | while read -r lib; do
      case $lib in "$venv"/*) continue ;; esac  # the venv's own bundled libraries come with it
      dir=$(readlink -f "$(dirname "$lib")")
      mkdir -p "$root$dir"
      cp -L "$lib" "$root$dir/$(basename "$lib")"
    done
rm -f "$elves"

printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nlifeboat:x:65532:65532::/nonexistent:/usr/sbin/nologin\n' \
  >"$root/etc/passwd"
printf 'root:x:0:\nlifeboat:x:65532:\n' >"$root/etc/group"
