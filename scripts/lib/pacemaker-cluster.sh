#!/bin/bash
# Three Pacemaker/Corosync nodes on one host for the tests (PacemakerCluster in TestSupport):
# each node is a network namespace ${PCMK_NS}N (198.18.7.N on a bridge in ${PCMK_NS}br) plus
# persistent mount and UTS namespaces bound to files in $PCMK_DIR/ns, with its own /run,
# /etc/corosync, /var/lib/pacemaker and logs under $PCMK_DIR/nodes/nodeN. Adapted from the
# verified recipe (docs/pacemaker.md, "Tests"). Needs root.
#
# usage: pacemaker-cluster.sh prepare | start | configure | down | exec N CMD... |
#        spawn N LOG CMD... | kill9 N | isolate N | rejoin N
#   prepare    network, node file systems and namespaces (no cluster process yet)
#   start      corosync, then pacemakerd, on every node
#   configure  the promotable clone of $RA (ocf:bgworker:role) with promoted-max=1
# Environment: PCMK_DIR (required), PCMK_NS (default pcmk), AGENT (the OCF agent to install as
# ocf:bgworker:role), TOKEN (corosync token, ms), MONITOR_PROMOTED_MS / MONITOR_UNPROMOTED_MS (ms;
# Pacemaker reads "1.5s" as 1 s, and the two intervals must differ).
set -u
D=${PCMK_DIR:?PCMK_DIR must name the folder of the cluster}; NS=${PCMK_NS:-pcmk}
NSD=$D/ns; ND=$D/nodes; NODES="1 2 3"
TOKEN=${TOKEN:-1000}
RA=${RA:-ocf:bgworker:role}

nsx() { local n=$1; shift; nsenter --net=/run/netns/$NS$n --mount=$NSD/node$n.mnt --uts=$NSD/node$n.uts -- "$@"; }
spawn() { local n=$1 out=$2; shift 2; setsid nsenter --net=/run/netns/$NS$n --mount=$NSD/node$n.mnt --uts=$NSD/node$n.uts -- "$@" </dev/null >>"$out" 2>&1 & echo $!; }
# Setup only: Pacemaker and corosync have no notification for "up"; the tests themselves wait
# for bus signals.
waitfor() { local t=$1; shift; local i; for ((i=0; i<t*20; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done; return 1; }

net_up() {
  ip netns add ${NS}br; ip -n ${NS}br link set lo up
  ip -n ${NS}br link add br0 type bridge; ip -n ${NS}br link set br0 up
  for n in $NODES; do
    ip netns add $NS$n; ip -n $NS$n link set lo up
    ip -n ${NS}br link add veth$n type veth peer name eth0 netns $NS$n
    ip -n ${NS}br link set veth$n master br0 up
    ip -n $NS$n addr add 198.18.7.$n/24 dev eth0; ip -n $NS$n link set eth0 up
  done
}

corosync_conf() {
  cat <<CONF
totem {
  version: 2
  cluster_name: bgwtest
  transport: knet
  token: $TOKEN
  crypto_cipher: aes256
  crypto_hash: sha256
}
nodelist {
$(for n in $NODES; do printf '  node {\n    ring0_addr: 198.18.7.%s\n    name: node%s\n    nodeid: %s\n  }\n' $n $n $n; done)
}
quorum {
  provider: corosync_votequorum
}
logging {
  to_logfile: yes
  logfile: /var/log/corosync/corosync.log
  to_stderr: no
  to_syslog: no
  timestamp: on
}
CONF
}

# A seeded CIB: dc-deadtime 2s instead of 20s before the first election; no fencing in tests.
cib_xml() {
  cat <<CIB
<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config><cluster_property_set id="cib-bootstrap-options">
      <nvpair id="opt-stonith" name="stonith-enabled" value="false"/>
      <nvpair id="opt-nqp" name="no-quorum-policy" value="stop"/>
      <nvpair id="opt-dcd" name="dc-deadtime" value="2s"/>
    </cluster_property_set></crm_config>
    <nodes/><resources/><constraints/>
  </configuration>
  <status/>
</cib>
CIB
}

node_fs() {
  local n=$1 S=$ND/node$1
  rm -rf "$S"; mkdir -p $S/{etc-corosync,lib-corosync,run/resource-agents,run/lock,run/dbus,log/corosync,log/pacemaker}
  mkdir -p $S/lib-pacemaker/{cib,pengine,blackbox,cores}
  chown -R hacluster:haclient $S/lib-pacemaker $S/log/pacemaker
  chmod 750 $S/lib-pacemaker/*; chmod 770 $S/log/pacemaker; chmod 1777 $S/run/lock; chmod 755 $S/run $S/run/dbus
  ln -s /dev/shm $S/run/shm
  cib_xml > $S/lib-pacemaker/cib/cib.xml; chown hacluster:haclient $S/lib-pacemaker/cib/cib.xml; chmod 600 $S/lib-pacemaker/cib/cib.xml
  corosync_conf > $S/etc-corosync/corosync.conf; cp $D/authkey $S/etc-corosync/authkey; chmod 400 $S/etc-corosync/authkey
  touch $NSD/node$n.mnt $NSD/node$n.uts
  # The agent directory: the real providers bound in, plus ours, without writing to /usr.
  nsenter --net=/run/netns/$NS$n unshare --mount=$NSD/node$n.mnt --uts=$NSD/node$n.uts --propagation private \
    /bin/sh -ec "
    hostname node$n
    mount --bind $S/etc-corosync  /etc/corosync
    mount --bind $S/lib-corosync  /var/lib/corosync
    mount --bind $S/lib-pacemaker /var/lib/pacemaker
    mount --bind $S/log/corosync  /var/log/corosync
    mount --bind $S/log/pacemaker /var/log/pacemaker
    mount --bind $S/run /run
    mount -t tmpfs -o mode=1777,size=128m shm /dev/shm
    for p in /usr/lib/ocf/resource.d/*; do mkdir -p $D/ocf/resource.d/\${p##*/}; mount --bind \$p $D/ocf/resource.d/\${p##*/}; done
    mount --rbind $D/ocf/resource.d /usr/lib/ocf/resource.d"
}

prepare() {
  [ -e /run/netns/${NS}br ] && { echo "$NS: already up? run down first" >&2; exit 1; }
  mkdir -p $NSD $ND $D/ocf/resource.d/bgworker $D/agent
  install -m 755 "${AGENT:?AGENT must name the OCF agent}" $D/agent/role
  # What Pacemaker runs: the agent, with each call's start and end (CLOCK_REALTIME ns) recorded
  # in the node's /run/bgworker-test/agent-calls for the figures; meta-data writes nothing.
  cat > $D/ocf/resource.d/bgworker/role <<WRAPPER
#!/bin/sh
[ "\$1" = meta-data ] && exec $D/agent/role "\$@"
mkdir -p /run/bgworker-test
echo "\$1 start \$(date +%s%N)" >>/run/bgworker-test/agent-calls
$D/agent/role "\$@"
rc=\$?
echo "\$1 end \$(date +%s%N) \$rc" >>/run/bgworker-test/agent-calls
exit \$rc
WRAPPER
  chmod 755 $D/ocf/resource.d/bgworker/role
  [ -f $D/authkey ] || corosync-keygen -k $D/authkey >/dev/null
  # A namespace can be bound to a file only under a private mount (on a host whose / is shared,
  # as under systemd, it fails otherwise): make the folder its own private mount, as ip netns does.
  mount --bind $NSD $NSD && mount --make-private $NSD
  net_up
  for n in $NODES; do node_fs $n; done
}

start_node() {
  local n=$1 S=$ND/node$1
  spawn $n $S/log/corosync.out corosync -f > $S/corosync.pid
  waitfor 20 nsx $n corosync-cfgtool -s || { echo "node$n: corosync did not start" >&2; return 1; }
  spawn $n $S/log/pacemakerd.out env PCMK_logfacility=none PCMK_logfile=/var/log/pacemaker/pacemaker.log pacemakerd > $S/pacemakerd.pid
}

start() {
  for n in $NODES; do start_node $n || exit 1; done
  waitfor 60 sh -c "$0 exec 1 crm_mon -1 2>/dev/null | grep -q 'Online: \[ node1 node2 node3 \]'" || { echo "nodes not online" >&2; exit 1; }
}

configure() {
  local cls=${RA%%:*} rest=${RA#*:}; local prov=${rest%%:*} type=${rest#*:}
  nsx 1 cibadmin -C -o resources -X "<clone id=\"bgw\"><meta_attributes id=\"bgw-meta\">
   <nvpair id=\"bgw-promotable\" name=\"promotable\" value=\"true\"/><nvpair id=\"bgw-pmax\" name=\"promoted-max\" value=\"1\"/>
   <nvpair id=\"bgw-cmax\" name=\"clone-max\" value=\"3\"/><nvpair id=\"bgw-nmax\" name=\"clone-node-max\" value=\"1\"/></meta_attributes>
   <primitive id=\"role\" class=\"$cls\" provider=\"$prov\" type=\"$type\"><operations>
    <op id=\"role-mon-p\" name=\"monitor\" interval=\"${MONITOR_PROMOTED_MS:-2000}ms\" role=\"Promoted\" timeout=\"10s\"/>
    <op id=\"role-mon-u\" name=\"monitor\" interval=\"${MONITOR_UNPROMOTED_MS:-3000}ms\" role=\"Unpromoted\" timeout=\"10s\"/>
    <op id=\"role-demote\" name=\"demote\" interval=\"0\" timeout=\"30s\"/>
    <op id=\"role-stop\" name=\"stop\" interval=\"0\" timeout=\"30s\"/></operations></primitive></clone>"
}

pids_of() { ip netns pids $NS$1 2>/dev/null; }

down() {
  local n p
  for n in $NODES; do [ -s $ND/node$n/pacemakerd.pid ] && kill -TERM $(cat $ND/node$n/pacemakerd.pid) 2>/dev/null; done
  for n in $NODES; do p=$(cat $ND/node$n/pacemakerd.pid 2>/dev/null); [ -n "$p" ] && waitfor 60 sh -c "! kill -0 $p"; done
  for n in $NODES; do [ -s $ND/node$n/corosync.pid ] && kill -TERM $(cat $ND/node$n/corosync.pid) 2>/dev/null; done
  for n in $NODES; do p=$(cat $ND/node$n/corosync.pid 2>/dev/null); [ -n "$p" ] && waitfor 10 sh -c "! kill -0 $p"; done
  # Leftovers (after kill9: execd, schedulerd): only processes inside our namespaces, by pid.
  for n in $NODES; do p=$(pids_of $n); [ -n "$p" ] && kill -KILL $p 2>/dev/null; done
  for n in $NODES; do waitfor 10 sh -c "[ -z \"\$(ip netns pids $NS$n 2>/dev/null)\" ]"; done
  for n in $NODES; do
    umount $NSD/node$n.mnt $NSD/node$n.uts 2>/dev/null; ip netns del $NS$n 2>/dev/null; rm -f $ND/node$n/*.pid
  done
  ip netns del ${NS}br 2>/dev/null
  umount -R $D/ocf/resource.d 2>/dev/null
  umount $NSD 2>/dev/null
  rm -rf $NSD
  return 0
}

case "${1:-}" in
  prepare) prepare;; start) start;; configure) configure;; down) down;;
  exec) shift; nsx "$@";;
  spawn) shift; spawn "$@";;
  kill9) kill -KILL $(cat $ND/node$2/pacemakerd.pid $ND/node$2/corosync.pid);;
  isolate) ip -n ${NS}br link set veth$2 down;;
  rejoin) ip -n ${NS}br link set veth$2 up;;
  *) sed -n 7,8p "$0"; exit 2;;
esac
