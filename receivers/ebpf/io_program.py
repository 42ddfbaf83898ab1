"""The I/O side of the ``ebpf`` receiver: softirqs per process, network bytes per cgroup.

Two kinds of program, compiled by bcc into one object next to the scheduler program
(:mod:`.program`) and loaded and closed with it:

- ``irq:softirq_entry``: the softirq is counted for the thread group on the CPU when it
  starts, by vector: NET_TX (2), NET_RX (3) and BLOCK (4). This is how Kepler's eBPF
  program counted them (its ``bpf_net_tx_irq``, ``bpf_net_rx_irq``, ``bpf_block_irq``):
  a softirq runs in whatever context raised or caught it, so the count says who was on
  the CPU when network or block completion work ran, not who caused it. The agent
  drains the map once a tick (lookup and delete), so the map holds one interval.
- cgroup socket-buffer programs (BPF_PROG_TYPE_CGROUP_SKB), attached to the cgroup v2
  root for ingress and egress with BPF_F_ALLOW_MULTI (programs others attached stay):
  every packet a socket sends or receives adds its length (the IP packet: no link
  header) to the counters of the socket's cgroup (``bpf_skb_cgroup_id``). They always
  let the packet pass. The counters are cumulative; the agent reads them each tick.
"""

from __future__ import annotations

import struct

SOFTIRQ_FN = "otelk_softirq"
INGRESS_FN = "otelk_skb_in"
EGRESS_FN = "otelk_skb_out"

#: Softirq vectors (include/linux/interrupt.h).
NET_TX_SOFTIRQ = 2
NET_RX_SOFTIRQ = 3
BLOCK_SOFTIRQ = 4

#: ``struct irqs``: net_tx, net_rx, block.
IRQS = struct.Struct("<QQQ")
#: ``struct net``: rx_bytes, tx_bytes, rx_packets, tx_packets.
NET = struct.Struct("<QQQQ")

SOURCE = r"""
struct irqs {
    u64 net_tx;
    u64 net_rx;
    u64 block;
};

struct net {
    u64 rx_bytes;
    u64 tx_bytes;
    u64 rx_packets;
    u64 tx_packets;
};

BPF_HASH(softirqs, u32, struct irqs, MAX_PROCESSES);
BPF_HASH(net_bytes, u64, struct net, MAX_CGROUPS);

int otelk_softirq(struct tracepoint__irq__softirq_entry *args)
{
    unsigned int vec = args->vec;
    if (vec < 2 || vec > 4)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct irqs zero = {};
    struct irqs *c = softirqs.lookup_or_try_init(&tgid, &zero);
    if (!c)
        return 0;
    if (vec == 2)
        __sync_fetch_and_add(&c->net_tx, 1);
    else if (vec == 3)
        __sync_fetch_and_add(&c->net_rx, 1);
    else
        __sync_fetch_and_add(&c->block, 1);
    return 0;
}

static __always_inline struct net *net_of(struct __sk_buff *skb)
{
    u64 id = bpf_skb_cgroup_id(skb);
    struct net zero = {};
    return net_bytes.lookup_or_try_init(&id, &zero);
}

int otelk_skb_in(struct __sk_buff *skb)
{
    struct net *n = net_of(skb);
    if (n) {
        __sync_fetch_and_add(&n->rx_bytes, skb->len);
        __sync_fetch_and_add(&n->rx_packets, 1);
    }
    return 1;
}

int otelk_skb_out(struct __sk_buff *skb)
{
    struct net *n = net_of(skb);
    if (n) {
        __sync_fetch_and_add(&n->tx_bytes, skb->len);
        __sync_fetch_and_add(&n->tx_packets, 1);
    }
    return 1;
}
"""
