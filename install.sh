#!/usr/bin/env bash
# Install the broadcast server on Debian 12, Ubuntu 22.04 or 24.04, as root:
#
#   sudo ./install.sh                          asks the public IP (default: detected)
#   sudo ./install.sh --yes --ip 203.0.113.10  unattended
#   sudo ./install.sh --uninstall [--purge]
#
# Run it again to upgrade in place: the config and the certificate are kept.
# What it writes is described in deploy/README.md; ./install.sh --help lists the options.
set -Eeuo pipefail

readonly USAGE="usage: install.sh [options]
  --ip IP            public address announced to browsers (default: asked, detected)
  --yes              do not ask: take the detected IP unless --ip is given
  --http-port N      HTTP port (default 8080)
  --https-port N     HTTPS port (default 8443)
  --domain NAME      DNS name of the server: put in the certificate and the URLs
  --cert FILE --key FILE
                     a PEM certificate (chain) and its key, copied to /etc/broadcast/tls
                     (default: a self-signed certificate for the IP or domain)
  --letsencrypt EMAIL
                     with --domain: a trusted certificate from Let's Encrypt (certbot,
                     HTTP-01: DOMAIN must point here and port 80 be open), renewed by
                     certbot.timer; the server reloads it, live broadcasts carry on.
                     EMAIL: the ACME account's contact address
  --acme-server URL  with --letsencrypt: another ACME directory (default Let's Encrypt's)
  --cluster URL      join a cluster: its Redis, redis://[:PASSWORD@]HOST:6379/0
  --role ROLE        with --cluster: both (default), origin or edge
  --node-url URL     with --cluster: this node's URL as browsers reach it
                     (default: https://DOMAIN-or-IP:HTTPS-PORT)
  --node-id ID       with --cluster: this node's name in the cluster (default: its host)
  --cluster-secret S with --cluster: the secret edges pull with (default: shared
                     through Redis; set the same one on every node to fix it)
  --uninstall        remove the service, the app and the user; keep config and logs
  --purge            with --uninstall: remove /etc/broadcast and /var/log/broadcast too
                     (recordings in /var/lib/broadcast/recordings are always kept)
  --python PATH      Python >= 3.11 for the venv (default: /usr/bin/python3, or 3.11)
  --pip-args ARGS    extra pip arguments, e.g. \"--no-index --find-links /srv/wheels\"
                     to install offline from a wheelhouse
  --root DIR         install under DIR as a fake root (DIR/opt/broadcast, DIR/etc/...)
  --no-systemd       skip apt, useradd, ufw and systemctl; still write every file
  -h, --help         this help"

ip="" yes=0 http_port=8080 https_port=8443 domain="" cert="" key=""
uninstall=0 purge=0 python="" pip_args="" root="" no_systemd=0 letsencrypt="" acme_server=""
cluster="" role="" node_url="" node_id="" cluster_secret=""

die() {
    echo "install.sh: $*" >&2
    exit 1
}

need_value() {
    [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --ip) need_value "$@"; ip=$2; shift ;;
        --yes|-y) yes=1 ;;
        --http-port) need_value "$@"; http_port=$2; shift ;;
        --https-port) need_value "$@"; https_port=$2; shift ;;
        --domain) need_value "$@"; domain=$2; shift ;;
        --cert) need_value "$@"; cert=$2; shift ;;
        --key) need_value "$@"; key=$2; shift ;;
        --letsencrypt) need_value "$@"; letsencrypt=$2; shift ;;
        --acme-server) need_value "$@"; acme_server=$2; shift ;;
        --cluster) need_value "$@"; cluster=$2; shift ;;
        --role) need_value "$@"; role=$2; shift ;;
        --node-url) need_value "$@"; node_url=$2; shift ;;
        --node-id) need_value "$@"; node_id=$2; shift ;;
        --cluster-secret) need_value "$@"; cluster_secret=$2; shift ;;
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        --python) need_value "$@"; python=$2; shift ;;
        --pip-args) need_value "$@"; pip_args=$2; shift ;;
        --root) need_value "$@"; root=$2; shift ;;
        --no-systemd) no_systemd=1 ;;
        -h|--help) echo "$USAGE"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done

if [[ -n $root ]]; then
    mkdir -p "$root" || die "cannot create --root $root"
    root=$(cd "$root" && pwd)
    [[ $root == / ]] && root=""
fi
readonly APP_DIR="$root/opt/broadcast"
readonly VENV="$APP_DIR/venv"
readonly CONF_DIR="$root/etc/broadcast"
readonly CONFIG="$CONF_DIR/flashphoner.xml"
readonly TLS_DIR="$CONF_DIR/tls"
readonly LOG_DIR="$root/var/log/broadcast"
readonly RECORDINGS_DIR="$root/var/lib/broadcast/recordings"
readonly UNIT="$root/etc/systemd/system/broadcast.service"
readonly LOGROTATE="$root/etc/logrotate.d/broadcast"
readonly SERVICE_USER=broadcast
# certbot's own places (its defaults without --root); the certificate is named broadcast.
readonly LE_DIR="$root/etc/letsencrypt"
readonly LE_RENEWAL="$LE_DIR/renewal/broadcast.conf"
readonly LE_ARGS=(--config-dir "$LE_DIR" --work-dir "$root/var/lib/letsencrypt"
    --logs-dir "$root/var/log/letsencrypt")
readonly DEPLOY_HOOK="$root/etc/broadcast/letsencrypt-deploy-hook"
readonly LETS_ENCRYPT=https://acme-v02.api.letsencrypt.org/directory

# Piped (curl ... | sudo bash), there is no script file: the checkout is the current directory.
SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]:-$PWD/install.sh}")" && pwd)
readonly SOURCE_DIR

# Every step names itself and what to do when it fails; the ERR trap prints both.
step="starting"
failed_command=""  # set when $BASH_COMMAND would not say what failed
fix="read the message above, then run install.sh again"
begin() {
    step=$1
    fix=$2
    echo "==> $step"
}
on_error() {
    local status=$? command=${failed_command:-$BASH_COMMAND}
    if ((BASH_SUBSHELL > 0)); then
        exit "$status"  # inside $(...): the command around it reports
    fi
    trap - ERR
    echo >&2
    echo "install.sh: FAILED while $step" >&2
    echo "  command: $command (exit status $status)" >&2
    echo "  what to do: $fix" >&2
    exit "$status"
}
trap on_error ERR

work_dir="" le_log=""
cleanup() {
    if [[ -n $work_dir$le_log ]]; then
        rm -rf "$work_dir" "$le_log"
    fi
}
trap cleanup EXIT

# --- checks ---------------------------------------------------------------------------

valid_port() {
    [[ $1 =~ ^[0-9]{1,5}$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535))
}

valid_ip() {
    local IFS=. part
    if [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then
        for part in $1; do
            ((10#$part <= 255)) || return 1
        done
        return 0
    fi
    [[ $1 == *:* && $1 =~ ^[0-9A-Fa-f:.]+$ ]]
}

(( purge == 0 || uninstall == 1 )) || die "--purge goes with --uninstall"
valid_port "$http_port" || die "--http-port must be 1-65535, got \"$http_port\""
valid_port "$https_port" || die "--https-port must be 1-65535, got \"$https_port\""
[[ $http_port != "$https_port" ]] || die "--http-port and --https-port must differ"
[[ -z $ip ]] || valid_ip "$ip" || die "--ip must be an IPv4 or IPv6 address, got \"$ip\""
[[ -z $domain || $domain =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] \
    || die "--domain must be a DNS name, got \"$domain\""
if [[ -n $cert || -n $key ]]; then
    [[ -n $cert && -n $key ]] || die "--cert and --key go together"
    [[ -r $cert ]] || die "cannot read --cert $cert"
    [[ -r $key ]] || die "cannot read --key $key"
fi
if [[ -n $letsencrypt ]]; then
    [[ -n $domain ]] || die "--letsencrypt needs --domain NAME (the name the certificate is for)"
    [[ -z $cert ]] || die "--letsencrypt and --cert/--key are two ways to get a certificate: pick one"
    [[ $letsencrypt =~ ^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$ ]] \
        || die "--letsencrypt needs an email address, got \"$letsencrypt\""
    [[ $http_port != 80 ]] || die "the server's HTTP port is 80, which Let's Encrypt needs" \
        "at each renewal (HTTP-01, certbot standalone): use another --http-port"
    [[ -z $acme_server || $acme_server =~ ^https://[^[:space:]]+$ ]] \
        || die "--acme-server must be an https:// URL (an ACME directory), got \"$acme_server\""
elif [[ -n $acme_server ]]; then
    die "--acme-server goes with --letsencrypt EMAIL"
fi
if [[ -n $cluster ]]; then
    [[ $cluster =~ ^rediss?://[^[:space:]]+$ ]] \
        || die "--cluster must be a redis:// or rediss:// URL, got \"${cluster%%@*}...\""
    [[ -z $role || $role =~ ^(both|origin|edge)$ ]] \
        || die "--role must be both, origin or edge, got \"$role\""
    [[ -z $node_url || $node_url =~ ^https?://[^/[:space:]]+/?$ ]] \
        || die "--node-url must be http(s)://HOST[:PORT], got \"$node_url\""
    [[ -z $node_id || $node_id =~ ^[A-Za-z0-9_.-]{1,64}$ ]] \
        || die "--node-id must be 1-64 letters, digits, '.', '_' or '-', got \"$node_id\""
elif [[ -n $role$node_url$node_id$cluster_secret ]]; then
    die "--role, --node-url, --node-id and --cluster-secret go with --cluster URL"
fi
if [[ -z $root && $EUID -ne 0 ]]; then
    die "run it as root: sudo $0 $*"
fi

systemd() {
    (( no_systemd == 0 ))
}
if systemd && [[ ! -d /run/systemd/system ]]; then
    die "systemd is not running here (a container?): pass --no-systemd, then start the" \
        "server yourself with the command printed at the end"
fi

# --- uninstall ------------------------------------------------------------------------

config_value() {  # the first <name>value</name> of the config outside comments, or nothing
    perl -0777 -pe 's/<!--.*?-->//gs' "$CONFIG" \
        | sed -n "s:.*<$1>[[:space:]]*\([^<]*[^<[:space:]]\)[[:space:]]*</$1>.*:\1:p" \
        | head -n 1
}

ufw_active() {
    command -v ufw >/dev/null && ufw status 2>/dev/null | grep -q '^Status: active'
}

firewall_rules() {  # the ufw rules for a config: one per line
    local port media
    for port in "$(config_value http_port)" "$(config_value https_port)"; do
        [[ -n $port ]] && echo "$port/tcp"
    done
    media=$(config_value media_ports)
    if [[ -n $media ]]; then
        echo "${media/-/:}/udp"
    else
        # The main process and each worker process (<workers>, 0: one per core) have
        # a media port of their own: media_port, media_port + 1, ...
        local workers last
        media=$(config_value media_port)
        media=${media:-8081}
        workers=$(config_value workers)
        [[ -n $workers && $workers != 0 ]] || workers=$(nproc)
        last=$(( media + workers - 1 ))
        (( last > media )) && media="$media:$last"
        echo "$media/udp"
        [[ $(config_value ice_tcp) == false ]] || echo "$media/tcp"
    fi
    if [[ -f $LE_RENEWAL ]]; then
        echo "80/tcp"  # Let's Encrypt checks the domain on port 80 at every renewal
    fi
}

if (( uninstall )); then
    if systemd; then
        begin "stopping and removing the service" \
            "check 'systemctl status broadcast', then run install.sh --uninstall again"
        if [[ -f $UNIT ]]; then
            systemctl disable --now broadcast.service || true
        fi
        rm -f "$UNIT"
        systemctl daemon-reload
        if [[ -f $CONFIG ]] && ufw_active; then
            while read -r rule; do
                # Kept certificates keep renewing, on port 80 (unless --purge).
                if [[ $rule == 80/tcp ]] && (( ! purge )); then
                    continue
                fi
                ufw delete allow "$rule" || true
            done < <(firewall_rules)
        fi
    else
        rm -f "$UNIT"
    fi
    begin "removing $APP_DIR and the logrotate file" "remove $APP_DIR by hand"
    rm -rf "$APP_DIR"
    rm -f "$LOGROTATE"
    if systemd && getent passwd "$SERVICE_USER" >/dev/null; then
        begin "removing the $SERVICE_USER user" "remove it with: userdel $SERVICE_USER"
        userdel "$SERVICE_USER"
    fi
    if (( purge )) && [[ -f $LE_RENEWAL ]]; then
        begin "deleting the Let's Encrypt certificate (certbot delete)" \
            "delete it with: certbot delete --cert-name broadcast"
        certbot delete --non-interactive --cert-name broadcast "${LE_ARGS[@]}"
    fi
    if (( purge )); then
        begin "removing $CONF_DIR and $LOG_DIR" "remove them by hand"
        rm -rf "$CONF_DIR" "$LOG_DIR"
        echo "broadcast is uninstalled; its config and logs are removed." \
            "Kept: the recordings in $RECORDINGS_DIR."
    else
        echo "broadcast is uninstalled. Kept: $CONF_DIR (config, keys, certificate) and" \
            "$LOG_DIR; remove them with: install.sh --uninstall --purge. Kept too:" \
            "the recordings in $RECORDINGS_DIR."
        if [[ -f $LE_RENEWAL ]]; then
            echo "The Let's Encrypt certificate keeps renewing (port 80 stays open for it);" \
                "stop that with: certbot delete --cert-name broadcast"
        fi
    fi
    exit 0
fi

# --- questions ------------------------------------------------------------------------

[[ -f $SOURCE_DIR/setup.cfg && -f $SOURCE_DIR/deploy/broadcast.service ]] \
    || die "$SOURCE_DIR is not a checkout of broadcast: run install.sh from the repository"

detect_ip() {  # the source address of the default route; sends no traffic
    local found=""
    if command -v ip >/dev/null; then
        found=$(ip -4 route get 1.1.1.1 2>/dev/null \
            | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}') || true
    fi
    if [[ -z $found ]] && command -v hostname >/dev/null; then
        found=$(hostname -I 2>/dev/null | awk '{print $1}') || true
    fi
    echo "$found"
}

ask_ip() {
    local detected answer tty
    detected=$(detect_ip)
    if (( yes )); then
        [[ -n $detected ]] || die "cannot detect this server's IP: pass --ip"
        ip=$detected
        return
    fi
    if [[ -t 0 ]]; then
        tty=/dev/stdin
    elif { true </dev/tty; } 2>/dev/null; then
        tty=/dev/tty  # piped: the answers come from the terminal, never from the pipe
    else
        die "no terminal to ask the server's IP on: pass --yes (and --ip IP)"
    fi
    while true; do
        echo "Public IP address of this server, announced to browsers" \
            "(behind NAT: the public one)" >&2
        read -r -p "IP [${detected:-none detected}]: " answer <"$tty" \
            || die "no answer: pass --yes (and --ip IP)"
        answer=${answer:-$detected}
        if [[ -n $answer ]] && valid_ip "$answer"; then
            ip=$answer
            return
        fi
        echo "\"$answer\" is not an IPv4 or IPv6 address." >&2
    done
}

config_kept=0
if [[ -f $CONFIG ]]; then
    config_kept=1
elif [[ -z $ip ]]; then
    ask_ip
fi

# --- system ---------------------------------------------------------------------------

if systemd; then
    if [[ -r /etc/os-release ]]; then
        # shellcheck source=/dev/null
        os=$(. /etc/os-release && echo "${ID:-?} ${VERSION_ID:-?}")
        case $os in
            "debian 12"|"ubuntu 22.04"|"ubuntu 24.04") ;;
            *) echo "install.sh: warning: tested on Debian 12, Ubuntu 22.04 and 24.04," \
                "not on $os" >&2 ;;
        esac
    fi
    begin "installing system packages (apt-get)" \
        "check the network and the apt sources (apt-get update), then run install.sh again"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # gcc and python3-dev build the native batched-send extension (faster fan-out).
    apt-get install -y -q python3-venv python3-pip python3-dev gcc openssl ca-certificates iproute2
    if [[ -n $letsencrypt ]]; then
        apt-get install -y -q certbot
    fi
fi

begin "finding Python >= 3.11" \
    "install Python 3.11 or later (Ubuntu 22.04: apt-get install python3.11-venv) or pass --python"
python_ok() {
    "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}
if [[ -z $python ]]; then
    # The system's Python, never one from PATH under /root (pyenv): the service user
    # must be able to run the venv's interpreter.
    python=/usr/bin/python3
    if ! python_ok "$python" && systemd; then
        apt-get install -y -q python3.11 python3.11-venv python3.11-dev  # 22.04 has 3.10
        python=/usr/bin/python3.11
    fi
fi
python_ok "$python"
command -v openssl >/dev/null

if systemd; then
    begin "creating the $SERVICE_USER system user" "create it with: useradd --system $SERVICE_USER"
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        useradd --system --user-group --no-create-home --home-dir "$APP_DIR" \
            --shell /usr/sbin/nologin "$SERVICE_USER"
    fi
fi

begin "creating the directories" "check that the disk is writable and not full"
mkdir -p "$APP_DIR" "$CONF_DIR" "$TLS_DIR" "$LOG_DIR" "$RECORDINGS_DIR" "${UNIT%/*}" \
    "${LOGROTATE%/*}"
chmod 0750 "$CONF_DIR" "$TLS_DIR" "$LOG_DIR" "$RECORDINGS_DIR"
if systemd; then
    chown "root:$SERVICE_USER" "$CONF_DIR" "$TLS_DIR"
    chown "$SERVICE_USER:$SERVICE_USER" "$LOG_DIR" "$RECORDINGS_DIR"
fi

# --- certificate ----------------------------------------------------------------------

readonly CERT_FILE="$TLS_DIR/cert.pem" KEY_FILE="$TLS_DIR/key.pem"

certbot_fix() {  # what to do about a failed certbot run, from its output (file $1)
    local public=${ip:-$(config_value ip)}
    if grep -q -i -e "already in use" -e "could not bind" "$1"; then
        echo "free port 80 (ss -ltnp 'sport = :80' names what holds it), then run install.sh again"
    elif grep -q -e "unauthorized" -e "Invalid response" "$1"; then
        echo "$domain points at another server that answers on port 80 (an old host, a" \
            "CDN): point its A record at ${public:-the public IP of this server}, then run" \
            "install.sh again"
    elif grep -q -i -e "DNS problem" -e "NXDOMAIN" -e "could not resolve" "$1"; then
        echo "point $domain at this server: an A record for ${public:-its public IP}" \
            "(AAAA for IPv6) at your DNS provider; once 'getent ahosts $domain' shows it," \
            "run install.sh again"
    elif grep -q -i -e "timeout" -e "firewall" -e "refused" -e "reset" -e "unreachable" "$1"
    then
        echo "Let's Encrypt could not reach port 80 here: open 80/tcp in every firewall in" \
            "front of this server (a cloud provider's security group too) and check that" \
            "$domain points here, then run install.sh again"
    elif grep -q -i -e "rateLimited" -e "too many" "$1"; then
        echo "wait out Let's Encrypt's rate limit (the message above says until when)," \
            "then run install.sh again"
    else
        echo "read certbot's message above (and $root/var/log/letsencrypt/letsencrypt.log)," \
            "then run install.sh again; without --letsencrypt it makes a self-signed certificate"
    fi
}

lets_encrypt() {  # a certificate for $domain from the ACME server, installed by the hook
    local public=${ip:-$(config_value ip)} resolved holder ca renewal_note
    if (( config_kept )) && [[ $(config_value http_port) == 80 ]]; then
        die "the server's HTTP port is 80 in $CONFIG, which Let's Encrypt needs at each" \
            "renewal (HTTP-01, certbot standalone): set another <http_port> there"
    fi
    begin "checking port 80 and $domain for Let's Encrypt" "see the message above"
    command -v certbot >/dev/null \
        || die "certbot is missing: apt-get install certbot (install.sh does it unless --no-systemd)"
    # Free for IPv4 and for IPv6 alone (nginx's `listen [::]:80` holds only that).
    if ! "$python" -c 'import socket
for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    try:
        s = socket.socket(family)
    except OSError:
        continue  # no IPv6 here
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((address, 80))' 2>/dev/null; then
        holder=$(ss -Hltnp 'sport = :80' 2>/dev/null | grep -o 'users:(("[^"]*"' | head -n 1 \
            | cut -d '"' -f 2) || true
        die "port 80 is taken${holder:+ by $holder}: Let's Encrypt checks $domain on port 80" \
            "(HTTP-01) for a few seconds now and at each renewal. Move it off port 80 for" \
            "good (systemctl disable --now ${holder:-nginx}), or get a certificate another" \
            "way and pass --cert/--key"
    fi
    # /etc/hosts may name this machine 127.0.1.1: what Let's Encrypt sees is the DNS's.
    resolved=$(getent ahosts "$domain" 2>/dev/null | awk '{print $1}' \
        | grep -v -e '^127\.' -e '^::1$' | sort -u | paste -sd ' ') || true
    if [[ -z $resolved ]]; then
        echo "install.sh: warning: $domain does not resolve here; Let's Encrypt needs it to" \
            "point at this server (${public:-its public IP})" >&2
    elif [[ -n $public && " $resolved " != *" $public "* ]]; then
        echo "install.sh: warning: $domain points at $resolved, not at this server's" \
            "$public: Let's Encrypt will look for it there" >&2
    fi
    local opened_80=0 wanted=${acme_server:-$LETS_ENCRYPT} before renew=()
    if systemd && ufw_active && ! ufw status | grep -q '^80/tcp .*ALLOW'; then
        ufw allow 80/tcp >/dev/null
        opened_80=1  # closed again if no certificate comes of it
    fi
    if [[ -f $LE_RENEWAL ]]; then
        # certbot keeps a certificate not yet due whatever server it came from: one
        # from another server (staging, then the real one) is replaced at once.
        before=$(sed -n 's/^server = //p' "$LE_RENEWAL")
        if [[ $before != "$wanted" ]]; then
            echo "    (the certificate came from $before: a new one replaces it)"
            renew=(--force-renewal --break-my-certs)
        fi
    fi

    ca="Let's Encrypt"
    [[ -z $acme_server ]] || ca=$acme_server
    begin "getting a certificate for $domain from $ca (certbot)" \
        "read certbot's message above, then run install.sh again"
    # certbot names the hook in the renewal's config: it must exist before certbot runs.
    install -m 0755 "$SOURCE_DIR/deploy/letsencrypt-deploy-hook" "$DEPLOY_HOOK"
    le_log=$(mktemp)
    if ! certbot certonly --standalone --non-interactive --agree-tos --email "$letsencrypt" \
        --domain "$domain" --cert-name broadcast --server "$wanted" --keep-until-expiring \
        "${renew[@]}" --deploy-hook "$DEPLOY_HOOK" "${LE_ARGS[@]}" >"$le_log" 2>&1
    then
        cat "$le_log" >&2
        if (( opened_80 )); then
            ufw delete allow 80/tcp >/dev/null || true
        fi
        fix=$(certbot_fix "$le_log")
        failed_command="certbot certonly --standalone --domain $domain"
        false  # the ERR trap reports the step and what to do
    fi
    grep -E "Successfully received|expires on|not yet due" "$le_log" | sed 's/^/    /' || true
    # A certificate certbot kept (not yet due) is installed by hand: the hook runs on issue.
    if ! cmp -s "$LE_DIR/live/broadcast/fullchain.pem" "$CERT_FILE"; then
        RENEWED_LINEAGE="$LE_DIR/live/broadcast" "$DEPLOY_HOOK" >/dev/null
    fi
    if systemd; then
        begin "enabling certbot's renewal timer" "enable it with: systemctl enable --now certbot.timer"
        systemctl enable --now certbot.timer
        renewal_note="renewed by certbot.timer"
    else
        renewal_note="renew it with: certbot renew ${LE_ARGS[*]} (daily, from cron)"
    fi
    certificate_note="$CERT_FILE, from Let's Encrypt for $domain ($renewal_note;
              each renewal reloads the server, live broadcasts carry on)"
}

if [[ -n $letsencrypt ]]; then
    lets_encrypt
elif [[ -n $cert ]]; then
    if [[ -f $LE_RENEWAL ]]; then
        # Else its next renewal would copy the Let's Encrypt certificate over this one.
        begin "deleting the Let's Encrypt certificate (--cert replaces it)" \
            "delete it with: certbot delete --cert-name broadcast"
        certbot delete --non-interactive --cert-name broadcast "${LE_ARGS[@]}"
        if systemd && ufw_active; then
            ufw delete allow 80/tcp >/dev/null || true
        fi
    fi
    begin "copying the certificate $cert and key $key" "check both are PEM files"
    install -m 0644 "$cert" "$CERT_FILE"
    install -m 0640 "$key" "$KEY_FILE"
    certificate_note="$CERT_FILE (copied from $cert: run install.sh with --cert/--key again after a renewal)"
elif [[ -f $LE_RENEWAL ]]; then
    # An upgrade: the hook of this version, and the URLs for the certificate's name.
    install -m 0755 "$SOURCE_DIR/deploy/letsencrypt-deploy-hook" "$DEPLOY_HOOK"
    if [[ -z $domain ]]; then
        domain=$(openssl x509 -in "$LE_DIR/live/broadcast/cert.pem" -noout \
            -ext subjectAltName 2>/dev/null | grep -o 'DNS:[^,]*' | head -n 1 | cut -c 5-) \
            || true
    fi
    echo "==> kept the Let's Encrypt certificate for ${domain:-its domain}"
    certificate_note="$CERT_FILE, from Let's Encrypt for ${domain:-its domain} (kept;
              renewed by certbot, each renewal reloads the server)"
elif [[ -f $CERT_FILE && -f $KEY_FILE ]]; then
    echo "==> kept the existing certificate $CERT_FILE"
    certificate_note="$CERT_FILE (kept)"
else
    begin "creating a self-signed certificate" "check openssl works: openssl version"
    cert_ip=${ip:-$(config_value ip)}
    san=""
    [[ -n $domain ]] && san="DNS:$domain"
    [[ -n $cert_ip ]] && san="${san:+$san,}IP:$cert_ip"
    [[ -n $san ]] || san="IP:127.0.0.1"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
        -subj "/CN=${domain:-${cert_ip:-broadcast}}" -addext "subjectAltName=$san" \
        -keyout "$KEY_FILE" -out "$CERT_FILE" 2>/dev/null
    chmod 0644 "$CERT_FILE"
    chmod 0640 "$KEY_FILE"
    certificate_note="$CERT_FILE, self-signed for $san: browsers warn once
              (avoid it with --domain NAME --cert FILE --key FILE, e.g. from Let's Encrypt)"
fi
if systemd; then
    chown "root:$SERVICE_USER" "$CERT_FILE" "$KEY_FILE"
fi

# --- the app --------------------------------------------------------------------------

begin "creating the venv $VENV" "remove $VENV and run install.sh again"
wanted_python=$(realpath "$(command -v "$python")")
if [[ -e $VENV/bin/python || -L $VENV/bin/python ]] \
    && [[ $(realpath -q "$VENV/bin/python" || true) != "$wanted_python" ]]; then
    # Its Python is gone (distribution upgrade) or another one was asked for: start afresh.
    echo "    (recreating it for $wanted_python)"
    rm -rf "$VENV"
fi
if [[ ! -x $VENV/bin/python ]]; then
    "$python" -m venv "$VENV"
fi

begin "installing broadcast into $VENV (pip)" \
    "check the network (pip needs PyPI, or pass --pip-args with a wheelhouse), then run install.sh again"
# Build from a copy: the checkout stays untouched (no build/ or egg-info written into it).
work_dir=$(mktemp -d)
tar -C "$SOURCE_DIR" --exclude='./.*' --exclude='./build' --exclude='./dist' \
    --exclude='*.egg-info' --exclude='__pycache__' --exclude='./tests' \
    --exclude='./bench' --exclude='./test-artifacts' -cf - . | tar -C "$work_dir" -xf -
read -r -a extra_pip_args <<<"$pip_args"
# A local directory is always reinstalled, so a second run upgrades in place.
"$VENV/bin/python" -m pip install --disable-pip-version-check -q \
    "${extra_pip_args[@]}" "$work_dir"
installed_version=$("$VENV/bin/broadcast" version)
[[ -f $VENV/share/broadcast/client/index.html ]]
install -m 0644 "$SOURCE_DIR/flashphoner.xml.example" "$CONF_DIR/flashphoner.xml.example"

# --- config ---------------------------------------------------------------------------

random_key() {
    openssl rand -hex 16
}

xml_text() {  # escape a value for an XML element
    local text=${1//&/&amp;}
    text=${text//</&lt;}
    echo "${text//>/&gt;}"
}

cluster_section() {  # the <cluster> element of a new config, or nothing
    [[ -n $cluster ]] || return 0
    local url=$node_url host=${domain:-$ip}
    [[ $host == *:* ]] && host="[$host]"
    [[ -n $url ]] || url="https://$host:$https_port"
    echo "  <cluster>"
    echo "    <!-- the cluster's Redis (its password stays in this file, never in logs) -->"
    echo "    <redis>$(xml_text "$cluster")</redis>"
    echo "    <!-- where browsers reach this node: viewers are redirected here -->"
    echo "    <node_url>$(xml_text "$url")</node_url>"
    [[ -z $node_id ]] || echo "    <node_id>$node_id</node_id>"
    echo "    <role>${role:-both}</role>"
    [[ -z $cluster_secret ]] || echo "    <secret>$(xml_text "$cluster_secret")</secret>"
    echo "  </cluster>"
}

if (( config_kept )); then
    echo "==> kept the existing config $CONFIG (not changed; edit it to change settings)"
    if [[ -n $cluster ]]; then
        echo "note: --cluster applies to a new config only; add <cluster> to $CONFIG" \
            "(see $CONF_DIR/flashphoner.xml.example)"
    fi
    if [[ -z $(config_value dir) ]]; then
        echo "note: recordings need a writable directory; add" \
            "<recording><dir>$RECORDINGS_DIR</dir></recording> to $CONFIG"
    fi
else
    begin "writing the config $CONFIG" "check that $CONF_DIR is writable"
    umask_before=$(umask)
    umask 0027
    cat >"$CONFIG" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!--
  Written by install.sh on $(date -u +%Y-%m-%d). Every setting, with its default:
  $CONF_DIR/flashphoner.xml.example. After an edit, check it and restart:
      $VENV/bin/broadcast check-config $CONFIG && systemctl restart broadcast
  install.sh keeps this file when it upgrades the server.
-->
<flashphoner>
  <server>
    <bind>0.0.0.0</bind>
    <ip>$ip</ip>
    <http_port>$http_port</http_port>
    <https_port>$https_port</https_port>
    <!-- relative to this file's directory -->
    <tls_certificate>tls/cert.pem</tls_certificate>
    <tls_key>tls/key.pem</tls_key>
  </server>
$(cluster_section)
  <auth>
    <!-- presenters publish with this key: https://HOST:$https_port/?key=KEY -->
    <publish_key>$(random_key)</publish_key>
    <!-- /api and /metrics: Authorization: Bearer KEY -->
    <admin_key>$(random_key)</admin_key>
  </auth>
  <recording>
    <!-- POST /api/streams/ID/recording (or the console at /admin) records a stream;
         <auto>true</auto> records every stream. -->
    <dir>$RECORDINGS_DIR</dir>
  </recording>
</flashphoner>
EOF
    umask "$umask_before"
    if systemd; then
        chown "root:$SERVICE_USER" "$CONFIG"
    fi
fi

begin "checking the config (broadcast check-config)" \
    "fix $CONFIG as the message says, then run install.sh again"
check_command=("$VENV/bin/broadcast" check-config "$CONFIG")
if systemd; then
    check_command=(runuser -u "$SERVICE_USER" -- "${check_command[@]}")  # can it read it all?
fi
if ! check_output=$("${check_command[@]}" 2>&1); then
    echo "$check_output" >&2
    failed_command="${check_command[*]}"
    false  # the ERR trap reports the step and what to do
fi
[[ -z $check_output ]] || echo "$check_output"

# --- service --------------------------------------------------------------------------

begin "writing the systemd unit and the logrotate file" "check that /etc is writable"
install -m 0644 "$SOURCE_DIR/deploy/broadcast.service" "$UNIT"
install -m 0644 "$SOURCE_DIR/deploy/logrotate-broadcast" "$LOGROTATE"

public_ip=$(config_value ip)
public_ip=${public_ip:-$ip}
host=${domain:-$public_ip}
[[ $host == *:* ]] && host="[$host]"
port_http=$(config_value http_port)
port_https=$(config_value https_port)
publish_key=$(config_value publish_key)
admin_key=$(config_value admin_key)
recordings_dir=$(config_value dir)
if [[ -n $port_https ]]; then
    base_url="https://$host:$port_https"
else
    base_url="http://$host:${port_http:-8080}"
fi

if systemd; then
    if ufw_active; then
        begin "opening the firewall (ufw)" "open the ports by hand: ufw allow PORT/tcp"
        while read -r rule; do
            ufw allow "$rule" >/dev/null
        done < <(firewall_rules)
    fi
    begin "starting broadcast.service" \
        "see why with: journalctl -u broadcast -n 50 --no-pager"
    systemctl daemon-reload
    systemctl enable broadcast.service >/dev/null
    systemctl restart broadcast.service
    health_host=$(config_value bind)
    case $health_host in
        ""|0.0.0.0|::) health_host=127.0.0.1 ;;
        *:*) health_host="[$health_host]" ;;
    esac
    health_url="http://$health_host:${port_http:-8080}/healthz"
    healthy=0
    for _ in $(seq 30); do
        if "$VENV/bin/python" -c 'import sys, urllib.request
sys.exit(urllib.request.urlopen(sys.argv[1], timeout=2).read() != b"ok")' \
            "$health_url" 2>/dev/null; then
            healthy=1
            break
        fi
        sleep 1
    done
    if (( ! healthy )); then
        journalctl -u broadcast.service -n 30 --no-pager >&2 || true
        echo "$health_url did not answer within 30 s" >&2
        false
    fi
fi

trap - ERR
echo
if (( config_kept )); then
    echo "broadcast $installed_version is upgraded; kept the existing config $CONFIG."
    if [[ -n $ip || ( -n $domain && -z $letsencrypt ) ]]; then
        echo "note: --ip/--domain/ports apply to a new config only; edit $CONFIG to change them."
    fi
else
    echo "broadcast $installed_version is installed."
fi
cat <<EOF

  presenter:  $base_url/?key=${publish_key:-<none: publishing is open>}
  viewers:    $base_url/watch/<stream-id>   (the presenter page shows the link)
  admin key:  ${admin_key:-<none: admin API off>}   (/api and /metrics: Authorization: Bearer KEY)
  config:     $CONFIG
  ports:      $(firewall_rules | paste -sd ' ')   (open them in any firewall in front of this server)
  certificate: $certificate_note
  console:    $base_url/admin   (the admin key signs in)
  recordings: ${recordings_dir:-$CONF_DIR/recordings (not writable under systemd: set <recording><dir>)}
  logs:       journalctl -u broadcast -f    and    $LOG_DIR/broadcast.log
  status:     systemctl status broadcast    (alias: service webcallserver status)
EOF
if [[ -n $(config_value redis) ]]; then
    echo "  cluster:    node $(config_value node_url), role $(config_value role)" \
        "(GET /api/cluster lists the nodes)"
fi
if ! systemd; then
    echo
    echo "  not started (--no-systemd); run it with:"
    echo "    $VENV/bin/broadcast serve --config $CONFIG"
fi
