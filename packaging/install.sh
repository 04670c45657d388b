#!/bin/sh
# edgefleet agent installer, in the K3s style:
#
#   curl -sfL https://github.com/edgefleet/edgefleet/releases/latest/download/install.sh |
#     EDGEFLEET_HUB=https://hub:8080 EDGEFLEET_TOKEN=... sh -
#
# Installs edge-agent for this machine's architecture (arm64, armhf, amd64),
# creates the `edgefleet` service user, /etc/edgefleet (config, env file) and
# /var/lib/edgefleet (keys, store), enrolls with the hub when EDGEFLEET_HUB
# and EDGEFLEET_TOKEN are set, gives the agent its own K3s ServiceAccount
# kubeconfig when K3s is installed, installs and enables the systemd unit,
# and writes an uninstall script. Running it again is safe: it replaces the
# binary and unit, keeps config, keys and enrollment, and restarts the agent.
#
# Environment:
#   EDGEFLEET_HUB                     hub REST URL (enroll when set with the token)
#   EDGEFLEET_TOKEN                   bootstrap token from the hub
#   EDGEFLEET_HUB_CA_FILE             CA bundle (PEM) the hub's HTTPS certificate chains
#                                     to; copied to /etc/edgefleet/hub-ca.pem and kept
#                                     as hub.ca_file (default: the system's roots)
#   EDGEFLEET_LABELS                  device labels, comma separated: site=lab,line=3
#   EDGEFLEET_DEVICE_ID               requested device id (default: chosen by the hub)
#   INSTALL_EDGEFLEET_VERSION         release to download (default: latest)
#   INSTALL_EDGEFLEET_BINARY          install this local edge-agent file (no download)
#   INSTALL_EDGEFLEET_URL             download the binary from this URL instead
#   INSTALL_EDGEFLEET_SHA256          expected sha256 of the binary (checked when set)
#   INSTALL_EDGEFLEET_BIN_DIR         where the binary goes (default: /usr/local/bin)
#   INSTALL_EDGEFLEET_SYSTEMD_DIR     where the unit goes (default: /etc/systemd/system)
#   INSTALL_EDGEFLEET_SKIP_ENABLE     true: do not enable the unit (nor start it)
#   INSTALL_EDGEFLEET_SKIP_START      true: do not start or restart the agent
#   INSTALL_EDGEFLEET_SKIP_K3S_ACCESS true: do not create the K3s ServiceAccount
#   INSTALL_EDGEFLEET_FORCE_ENROLL    true: enroll again although already enrolled
set -eu

REPO_URL=https://github.com/edgefleet/edgefleet
CONFIG_DIR=/etc/edgefleet
STATE_DIR=/var/lib/edgefleet
SERVICE_USER=edgefleet

info() { echo "[INFO]  $*"; }
warn() { echo "[WARN]  $*" >&2; }
fatal() {
    echo "[ERROR] $*" >&2
    exit 1
}
is_true() { [ "${1:-}" = true ] || [ "${1:-}" = 1 ] || [ "${1:-}" = yes ]; }

setup_env() {
    BIN_DIR=${INSTALL_EDGEFLEET_BIN_DIR:-/usr/local/bin}
    SYSTEMD_DIR=${INSTALL_EDGEFLEET_SYSTEMD_DIR:-/etc/systemd/system}
    VERSION=${INSTALL_EDGEFLEET_VERSION:-latest}
    BIN=$BIN_DIR/edge-agent
    UNINSTALL=$BIN_DIR/edge-agent-uninstall.sh
    UNIT=$SYSTEMD_DIR/edge-agent.service
    SUDO=
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || fatal "run as root (sudo not found)"
        SUDO=sudo
    fi
    # The agent's TLS (rustls) trusts the system's CA roots.
    if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then
        fatal "no CA certificates (/etc/ssl/certs/ca-certificates.crt): apt-get install ca-certificates"
    fi
    if [ -n "${EDGEFLEET_HUB:-}" ] && [ -z "${EDGEFLEET_TOKEN:-}" ]; then
        fatal "EDGEFLEET_HUB is set but EDGEFLEET_TOKEN is not"
    fi
}

setup_arch() {
    case $(uname -m) in
        aarch64 | arm64) ARCH=arm64 ;;
        armv7l | armv8l) ARCH=armhf ;;
        x86_64 | amd64) ARCH=amd64 ;;
        armv6l) fatal "armv6 (Raspberry Pi 1 / Zero) is not supported: armv7 or newer is needed" ;;
        *) fatal "unsupported architecture $(uname -m)" ;;
    esac
    info "architecture: $ARCH"
}

download() {
    # download URL FILE
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -qO "$2" "$1"
    else
        fatal "neither curl nor wget found to download $1"
    fi
}

install_binary() {
    tmp=$(mktemp "${TMPDIR:-/tmp}/edge-agent.XXXXXX")
    if [ -n "${INSTALL_EDGEFLEET_BINARY:-}" ]; then
        [ -f "$INSTALL_EDGEFLEET_BINARY" ] || fatal "INSTALL_EDGEFLEET_BINARY=$INSTALL_EDGEFLEET_BINARY is not a file"
        info "using local binary $INSTALL_EDGEFLEET_BINARY"
        cp "$INSTALL_EDGEFLEET_BINARY" "$tmp"
    else
        if [ -n "${INSTALL_EDGEFLEET_URL:-}" ]; then
            url=$INSTALL_EDGEFLEET_URL
        elif [ "$VERSION" = latest ]; then
            url=$REPO_URL/releases/latest/download/edge-agent-linux-$ARCH
        else
            url=$REPO_URL/releases/download/$VERSION/edge-agent-linux-$ARCH
        fi
        info "downloading $url"
        download "$url" "$tmp" || fatal "download of $url failed"
    fi
    if [ -n "${INSTALL_EDGEFLEET_SHA256:-}" ]; then
        echo "$INSTALL_EDGEFLEET_SHA256  $tmp" | sha256sum -c --status ||
            fatal "sha256 of the binary is not $INSTALL_EDGEFLEET_SHA256"
    fi
    chmod 0755 "$tmp"
    "$tmp" --version >/dev/null 2>&1 || fatal "the binary does not run on this machine ($ARCH)"
    $SUDO mkdir -p "$BIN_DIR"
    # Copy next to the target, then rename: a running agent keeps its inode.
    $SUDO cp "$tmp" "$BIN.new"
    $SUDO chown root:root "$BIN.new"
    $SUDO mv -f "$BIN.new" "$BIN"
    rm -f "$tmp"
    info "installed $BIN ($("$BIN" --version))"
}

setup_user() {
    if getent passwd "$SERVICE_USER" >/dev/null; then
        return
    fi
    if [ -f /usr/lib/sysusers.d/edgefleet.conf ] && command -v systemd-sysusers >/dev/null 2>&1; then
        $SUDO systemd-sysusers /usr/lib/sysusers.d/edgefleet.conf
    else
        $SUDO useradd --system --user-group --no-create-home \
            --home-dir "$STATE_DIR" --shell /usr/sbin/nologin \
            --comment "edgefleet device agent" "$SERVICE_USER"
    fi
    # Remembered so the uninstall script removes only a user we created.
    CREATED_USER=1
    info "created system user $SERVICE_USER"
}

setup_dirs() {
    $SUDO mkdir -p "$CONFIG_DIR" "$STATE_DIR"
    $SUDO chown "root:$SERVICE_USER" "$CONFIG_DIR"
    $SUDO chmod 0750 "$CONFIG_DIR"
    if [ ! -f "$CONFIG_DIR/agent.toml" ]; then
        # Same content as packaging/agent.toml (the .deb conffile).
        $SUDO tee "$CONFIG_DIR/agent.toml" >/dev/null <<'EOF'
# edge-agent configuration. `edge-agent enroll --hub URL --token TOKEN`
# rewrites this file with the hub, device id and broker it was given.
# Every setting and its default: `edge-agent config defaults`.
# Precedence: flag > environment (EDGEFLEET_*, e.g. in /etc/edgefleet/agent.env)
# > this file > default.
state_dir = "/var/lib/edgefleet"
EOF
    fi
}

# A K3s ServiceAccount for the agent: K3s's admin kubeconfig
# (/etc/rancher/k3s/k3s.yaml) stays root-only; the agent gets a token bound to
# a ClusterRole covering the kinds it applies, lists and prunes, in a
# kubeconfig readable by its group only. Untested in CI (no K3s there).
setup_k3s_access() {
    KUBECONFIG_OUT=$CONFIG_DIR/kubeconfig
    if is_true "${INSTALL_EDGEFLEET_SKIP_K3S_ACCESS:-}"; then
        return
    fi
    admin=/etc/rancher/k3s/k3s.yaml
    if [ ! -f "$admin" ]; then
        info "no K3s found ($admin): skipping the K3s ServiceAccount"
        return
    fi
    if command -v kubectl >/dev/null 2>&1; then
        kc="kubectl --kubeconfig $admin"
    elif command -v k3s >/dev/null 2>&1; then
        kc="k3s kubectl --kubeconfig $admin"
    else
        warn "K3s config found but neither kubectl nor k3s: skipping the K3s ServiceAccount"
        return
    fi
    info "creating K3s ServiceAccount edgefleet-agent"
    # Word splitting of $kc is intended (command and its flags).
    # shellcheck disable=SC2086
    $SUDO $kc apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: ServiceAccount
metadata: {name: edgefleet-agent, namespace: kube-system}
---
apiVersion: v1
kind: Secret
type: kubernetes.io/service-account-token
metadata:
  name: edgefleet-agent-token
  namespace: kube-system
  annotations: {kubernetes.io/service-account.name: edgefleet-agent}
---
# The agent applies whatever Kubernetes objects the hub ships to this
# device (CRDs and their resources, RBAC, any kind), so it may act on every
# kind, as the deployers of Rancher Fleet and Argo CD do in the clusters
# they manage. To bound it to the kinds you ship, list them instead: a kind
# left out fails its workload with a 403 that names it.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: edgefleet-agent}
rules:
  - apiGroups: ["*"]
    resources: ["*"]
    verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: edgefleet-agent}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edgefleet-agent}
subjects: [{kind: ServiceAccount, name: edgefleet-agent, namespace: kube-system}]
EOF
    token=
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        # shellcheck disable=SC2086
        token=$($SUDO $kc -n kube-system get secret edgefleet-agent-token \
            -o 'jsonpath={.data.token}' 2>/dev/null | base64 -d) || token=
        [ -n "$token" ] && break
        sleep 1
    done
    [ -n "$token" ] || fatal "K3s did not issue a token for ServiceAccount edgefleet-agent"
    # shellcheck disable=SC2086
    server=$($SUDO $kc config view --raw -o 'jsonpath={.clusters[0].cluster.server}')
    # shellcheck disable=SC2086
    ca=$($SUDO $kc config view --raw -o 'jsonpath={.clusters[0].cluster.certificate-authority-data}')
    $SUDO sh -c "umask 077; cat > '$KUBECONFIG_OUT.new'" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: k3s
    cluster: {server: "$server", certificate-authority-data: "$ca"}
users:
  - name: edgefleet-agent
    user: {token: "$token"}
contexts:
  - name: edgefleet-agent
    context: {cluster: k3s, user: edgefleet-agent}
current-context: edgefleet-agent
EOF
    $SUDO chown "root:$SERVICE_USER" "$KUBECONFIG_OUT.new"
    $SUDO chmod 0640 "$KUBECONFIG_OUT.new"
    $SUDO mv -f "$KUBECONFIG_OUT.new" "$KUBECONFIG_OUT"
    info "wrote $KUBECONFIG_OUT (root:$SERVICE_USER 0640)"
}

# /etc/edgefleet/agent.env, mode 0600, read by systemd (EnvironmentFile=):
# the agent's EDGEFLEET_* settings given to the installer, proxies, and the
# kubeconfig. The bootstrap token is used once for enrollment, never stored.
write_env_file() {
    env_file=$CONFIG_DIR/agent.env
    tmp=$(mktemp "${TMPDIR:-/tmp}/agent.env.XXXXXX")
    {
        echo "# Written by install.sh; environment of edge-agent.service."
        env | grep -E '^(EDGEFLEET_(HUB_URL|BROKER_URL|LOCAL_BROKER_URL|HTTP_PORT|LOG|OUTBOX_MAX_MESSAGES|OUTBOX_MAX_BYTES|MODELS_CACHE_MAX_BYTES)|(HTTPS?|NO)_PROXY|(https?|no)_proxy)=' || true
        if [ -f "$CONFIG_DIR/kubeconfig" ]; then
            echo "EDGEFLEET_KUBECONFIG=$CONFIG_DIR/kubeconfig"
        fi
    } >"$tmp"
    $SUDO cp "$tmp" "$env_file.new"
    rm -f "$tmp"
    $SUDO chown root:root "$env_file.new"
    $SUDO chmod 0600 "$env_file.new"
    $SUDO mv -f "$env_file.new" "$env_file"
    info "wrote $env_file (0600)"
}

enroll() {
    if [ -z "${EDGEFLEET_HUB:-}" ]; then
        info "EDGEFLEET_HUB not set: not enrolling (run: $BIN enroll --hub URL --token TOKEN)"
        return
    fi
    if [ -f "$STATE_DIR/hub-key.pub" ] && ! is_true "${INSTALL_EDGEFLEET_FORCE_ENROLL:-}"; then
        info "already enrolled (pinned hub key in $STATE_DIR): not enrolling again"
        return
    fi
    set -- enroll --hub "$EDGEFLEET_HUB" --config "$CONFIG_DIR/agent.toml" --state-dir "$STATE_DIR"
    if [ -n "${EDGEFLEET_HUB_CA_FILE:-}" ]; then
        [ -r "$EDGEFLEET_HUB_CA_FILE" ] || fatal "EDGEFLEET_HUB_CA_FILE $EDGEFLEET_HUB_CA_FILE: cannot read it"
        grep -q -- '-----BEGIN CERTIFICATE-----' "$EDGEFLEET_HUB_CA_FILE" ||
            fatal "EDGEFLEET_HUB_CA_FILE $EDGEFLEET_HUB_CA_FILE: no PEM CERTIFICATE in it"
        $SUDO mkdir -p "$CONFIG_DIR"
        $SUDO cp "$EDGEFLEET_HUB_CA_FILE" "$CONFIG_DIR/hub-ca.pem"
        $SUDO chmod 0644 "$CONFIG_DIR/hub-ca.pem"
        # The agent verifies the hub's certificate against it, from
        # enrollment on (hub.ca_file in agent.toml).
        set -- "$@" --hub-ca-file "$CONFIG_DIR/hub-ca.pem"
    fi
    if [ -n "${EDGEFLEET_DEVICE_ID:-}" ]; then
        set -- "$@" --device-id "$EDGEFLEET_DEVICE_ID"
    fi
    old_ifs=$IFS
    IFS=,
    for label in ${EDGEFLEET_LABELS:-}; do
        [ -n "$label" ] && set -- "$@" --label "$label"
    done
    IFS=$old_ifs
    info "enrolling with $EDGEFLEET_HUB"
    # The token goes through the environment, never the command line (ps).
    $SUDO env EDGEFLEET_TOKEN="$EDGEFLEET_TOKEN" "$BIN" "$@" || fatal "enrollment failed"
}

fix_ownership() {
    # enroll ran as root: hand keys and store to the service user.
    $SUDO chown -R "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
    $SUDO chmod 0700 "$STATE_DIR"
    $SUDO chown "root:$SERVICE_USER" "$CONFIG_DIR/agent.toml"
    $SUDO chmod 0640 "$CONFIG_DIR/agent.toml"
}

write_unit() {
    $SUDO mkdir -p "$SYSTEMD_DIR"
    # The unit of systemd/edge-agent.service with this ExecStart path (CI
    # checks that the two stay equal but for that path).
    $SUDO tee "$UNIT" >/dev/null <<EOF
# edgefleet device agent. Installed by the .deb or packaging/install.sh.
# Config: /etc/edgefleet/agent.toml (+ /etc/edgefleet/agent.env, mode 0600)
# State:  /var/lib/edgefleet      Logs: journalctl -u edge-agent
[Unit]
Description=edgefleet device agent
Documentation=https://github.com/edgefleet/edgefleet
Wants=network-online.target
After=network-online.target k3s.service k3s-agent.service
# Not enrolled yet (fresh package install): skip quietly instead of failing
# with exit 78; after \`edge-agent enroll\`, \`systemctl restart edge-agent\`.
ConditionPathExists=/var/lib/edgefleet/hub-key.pub

[Service]
Type=notify
# The supervisor (this process) runs the agent from the current release
# (/var/lib/edgefleet/agent/releases/, see packaging/README.md) and reverts
# an update that does not commit; the agent itself sends READY and the
# watchdog pings, hence NotifyAccess=all.
NotifyAccess=all
ExecStart=$BIN supervise --config /etc/edgefleet/agent.toml
# Re-reads the device key (edge-agent rotate-key does this by itself). The
# shell's kill: procps' /bin/kill is not on every image.
ExecReload=/bin/sh -c 'kill -HUP "\$MAINPID"'
EnvironmentFile=-/etc/edgefleet/agent.env
# The agent pings the watchdog from its main loop; a hung agent is restarted.
WatchdogSec=30s
Restart=always
RestartSec=2s
# Exit 78 (EX_CONFIG) means the configuration is invalid: restarting will not
# fix it, so stop instead of looping.
RestartPreventExitStatus=78
TimeoutStopSec=15s

User=edgefleet
Group=edgefleet
# Read access to a kubeconfig for K3s: the install script writes a dedicated
# ServiceAccount kubeconfig to /etc/edgefleet/kubeconfig (group edgefleet,
# mode 0640) instead of opening /etc/rancher/k3s/k3s.yaml (root-only).
StateDirectory=edgefleet
StateDirectoryMode=0700
ConfigurationDirectory=edgefleet
ConfigurationDirectoryMode=0750
UMask=0077

NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
CapabilityBoundingSet=
AmbientCapabilities=
DevicePolicy=closed
MemoryMax=256M

[Install]
WantedBy=multi-user.target
EOF
    $SUDO chmod 0644 "$UNIT"
    info "wrote $UNIT"
}

write_uninstall() {
    remove_user=false
    # A rerun keeps the decision of the run that created the user.
    if [ -n "${CREATED_USER:-}" ] || { [ -f "$UNINSTALL" ] && grep -q '^REMOVE_USER=true$' "$UNINSTALL"; }; then
        remove_user=true
    fi
    $SUDO tee "$UNINSTALL" >/dev/null <<EOF
#!/bin/sh
# Written by edgefleet's install.sh: removes edge-agent, its unit, config,
# state (keys, store, model cache), its K3s ServiceAccount and, if the
# installer created it, the edgefleet user.
set -u
[ "\$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
REMOVE_USER=$remove_user
if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now edge-agent.service >/dev/null 2>&1 || true
fi
rm -f "$UNIT" /etc/systemd/system/multi-user.target.wants/edge-agent.service
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    systemctl reset-failed edge-agent.service >/dev/null 2>&1 || true
fi
admin=/etc/rancher/k3s/k3s.yaml
if [ -f "\$admin" ]; then
    kc=
    if command -v kubectl >/dev/null 2>&1; then kc=kubectl; elif command -v k3s >/dev/null 2>&1; then kc="k3s kubectl"; fi
    if [ -n "\$kc" ]; then
        \$kc --kubeconfig "\$admin" delete --ignore-not-found clusterrolebinding/edgefleet-agent clusterrole/edgefleet-agent >/dev/null 2>&1 || true
        \$kc --kubeconfig "\$admin" -n kube-system delete --ignore-not-found secret/edgefleet-agent-token serviceaccount/edgefleet-agent >/dev/null 2>&1 || true
    fi
fi
rm -f "$BIN"
rm -rf "$STATE_DIR"
rm -f "$CONFIG_DIR/agent.toml" "$CONFIG_DIR/agent.env" "$CONFIG_DIR/kubeconfig"
rmdir "$CONFIG_DIR" 2>/dev/null || true
if [ "\$REMOVE_USER" = true ] && getent passwd $SERVICE_USER >/dev/null; then
    userdel $SERVICE_USER || true
    if getent group $SERVICE_USER >/dev/null; then groupdel $SERVICE_USER 2>/dev/null || true; fi
fi
rm -f "$UNINSTALL"
echo "edge-agent removed"
EOF
    $SUDO chmod 0755 "$UNINSTALL"
    info "wrote $UNINSTALL"
}

start_service() {
    if ! command -v systemctl >/dev/null 2>&1; then
        warn "systemctl not found: start $BIN supervise --config $CONFIG_DIR/agent.toml yourself (it runs the agent and its updates)"
        return
    fi
    if [ ! -d /run/systemd/system ]; then
        # A chroot or container: enabling works offline, starting does not.
        if ! is_true "${INSTALL_EDGEFLEET_SKIP_ENABLE:-}"; then
            $SUDO systemctl enable edge-agent.service >/dev/null 2>&1 || warn "systemctl enable failed"
        fi
        info "systemd is not running: not starting edge-agent"
        return
    fi
    $SUDO systemctl daemon-reload
    if is_true "${INSTALL_EDGEFLEET_SKIP_ENABLE:-}"; then
        info "INSTALL_EDGEFLEET_SKIP_ENABLE: not enabling or starting edge-agent"
        return
    fi
    $SUDO systemctl enable edge-agent.service >/dev/null 2>&1
    if is_true "${INSTALL_EDGEFLEET_SKIP_START:-}"; then
        info "INSTALL_EDGEFLEET_SKIP_START: not starting edge-agent"
        return
    fi
    if [ ! -f "$STATE_DIR/hub-key.pub" ]; then
        info "not enrolled: edge-agent starts once enrolled (then: systemctl restart edge-agent)"
        return
    fi
    info "starting edge-agent"
    $SUDO systemctl restart edge-agent.service
}

main() {
    setup_env
    setup_arch
    install_binary
    setup_user
    setup_dirs
    setup_k3s_access
    write_env_file
    enroll
    fix_ownership
    write_unit
    write_uninstall
    start_service
    info "done: status with 'edge-agent status', logs with 'journalctl -u edge-agent'"
}

main "$@"
