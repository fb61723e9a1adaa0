#!/usr/bin/env bash
# Installs weft from this checkout.
#   packaging/install.sh                 # system: /usr/local, /etc/weft, systemd unit (root)
#   packaging/install.sh --user          # this user: ~/.cargo/bin, ~/.config, user unit
# Options:
#   --prefix DIR   installation prefix (system default /usr/local; --user default ~/.cargo)
#   --built DIR    take weftd, weft and libweft.so from DIR instead of building them
#   --no-build     same as --built target/release
#   DESTDIR=/tmp/stage packaging/install.sh   stages everything under /tmp/stage (packagers)
# The shim goes to PREFIX/lib/weft/libweft.so, where `weft run` looks for it.
set -euo pipefail
cd "$(dirname "$0")/.."

user=0
prefix=""
built=""
while [ $# -gt 0 ]; do
    case "$1" in
        --user) user=1 ;;
        --prefix) prefix="$2"; shift ;;
        --built) built="$2"; shift ;;
        --no-build) built="target/release" ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
dest="${DESTDIR:-}"
if [ "$user" = 1 ]; then
    prefix="${prefix:-$HOME/.cargo}"
    etc="${XDG_CONFIG_HOME:-$HOME/.config}/weft"
    units="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
    share="${XDG_DATA_HOME:-$HOME/.local/share}"
else
    prefix="${prefix:-/usr/local}"
    etc="/etc/weft"
    units="/etc/systemd/system"
    share="$prefix/share"
fi

if [ -z "$built" ]; then
    cargo build --release --locked -p weft-daemon -p weft-preload
    built="target/release"
fi
for f in weftd weft libweft.so; do
    [ -f "$built/$f" ] || { echo "install.sh: $built/$f is missing" >&2; exit 1; }
done

install -d "$dest$prefix/bin" "$dest$prefix/lib/weft" "$dest$etc" "$dest$units" \
    "$dest$share/man/man1" "$dest$share/man/man8" \
    "$dest$share/bash-completion/completions" "$dest$share/zsh/site-functions" \
    "$dest$share/fish/vendor_completions.d"
install -m 0755 "$built/weftd" "$built/weft" "$dest$prefix/bin/"
install -m 0755 "$built/libweft.so" "$dest$prefix/lib/weft/"

weft="$built/weft"
pages="$(mktemp -d)"
trap 'rm -rf "$pages"' EXIT
"$weft" man "$pages" >/dev/null
install -m 0644 "$pages"/*.1 "$dest$share/man/man1/"
install -m 0644 "$pages"/*.8 "$dest$share/man/man8/"
"$weft" completions bash > "$dest$share/bash-completion/completions/weft"
"$weft" completions bash --weftd > "$dest$share/bash-completion/completions/weftd"
"$weft" completions zsh > "$dest$share/zsh/site-functions/_weft"
"$weft" completions zsh --weftd > "$dest$share/zsh/site-functions/_weftd"
"$weft" completions fish > "$dest$share/fish/vendor_completions.d/weft.fish"
"$weft" completions fish --weftd > "$dest$share/fish/vendor_completions.d/weftd.fish"

# Never overwrite a configuration someone already edited.
if [ ! -e "$dest$etc/weftd.toml" ]; then
    install -m 0644 packaging/weftd.toml "$dest$etc/weftd.toml"
    echo "installed $etc/weftd.toml: edit node, listen and [[neighbor]] before starting"
fi
if [ "$user" = 1 ]; then
    sed "s|%h/.cargo/bin|$prefix/bin|g" packaging/weftd-user.service > "$dest$units/weftd.service"
    echo "user unit: systemctl --user daemon-reload && systemctl --user enable --now weftd"
    echo "then: export WEFT_SOCKET=\$XDG_RUNTIME_DIR/weft/weftd.sock"
else
    sed "s|/usr/local/bin|$prefix/bin|g" packaging/weftd.service > "$dest$units/weftd.service"
    install -d "$dest/usr/lib/sysusers.d" "$dest/etc/sysctl.d"
    install -m 0644 packaging/weft.sysusers.conf "$dest/usr/lib/sysusers.d/weft.conf"
    install -m 0644 packaging/60-weftd.conf "$dest/etc/sysctl.d/60-weftd.conf"
    if [ -z "$dest" ] && command -v systemd-sysusers >/dev/null; then
        systemd-sysusers /usr/lib/sysusers.d/weft.conf
        sysctl -q -p /etc/sysctl.d/60-weftd.conf || true
        systemctl daemon-reload 2>/dev/null || true
    fi
    echo "system unit: systemctl enable --now weftd (config $etc/weftd.toml)"
    echo "let a user run programs over the overlay: usermod -aG weft USER"
fi
"$dest$prefix/bin/weftd" --version >/dev/null
echo "weft installed under $dest$prefix"
