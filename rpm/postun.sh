# %postun: what %systemd_postun_with_restart does. $1 is 0 on removal, 1 on upgrade.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
    # Upgrade: restart the service if it was running, so the new binary serves.
    systemctl try-restart sftp-ha.service >/dev/null 2>&1 || :
fi
if [ "$1" -eq 0 ]; then
    # Removal: the metrics of a daemon that is gone would only look stale to the alerts.
    rm -f /var/lib/prometheus/node-exporter/sftp-ha.prom
fi
