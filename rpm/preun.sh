# %preun: what %systemd_preun does. $1 is 0 on removal, 1 on upgrade.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now sftp-ha.service >/dev/null 2>&1 || :
fi
