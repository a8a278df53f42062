# %post: what %systemd_post does (cargo-generate-rpm has no systemd macros).
# $1 is the number of sftp-ha packages installed after this one: 1 on first install.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    # As on RHEL: the preset policy decides whether the unit is enabled; nothing is started.
    systemctl --no-reload preset sftp-ha.service >/dev/null 2>&1 || :
    [ -e /srv/sftp-ha ] || install -d -o root -g root -m 0755 /srv/sftp-ha
fi
