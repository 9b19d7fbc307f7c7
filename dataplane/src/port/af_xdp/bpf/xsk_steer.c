// SPDX-License-Identifier: MIT OR Apache-2.0
//
// The XDP program of iketcp's AF_XDP port (dataplane/src/port/af_xdp/).
//
// It steals from the interface only what belongs to the userspace TCP stack: ARP whose target
// is its IPv4 address, IPv4 to that address, IPv6 to its IPv6 address or that address's
// solicited-node group. Those frames go to the AF_XDP socket bound to the queue they came in on
// (the `xsks` map, one slot per queue); everything else, and anything arriving on a queue
// without a socket, goes on to the kernel (XDP_PASS), so the host keeps its own traffic.
//
// Built by `dataplane/src/port/af_xdp/bpf/build.sh` into xsk_steer.o, which is committed: the build of the
// crate needs no clang. A test rebuilds it when clang is installed and compares the bytes.

// No system headers: the few kernel ABI values used are spelled out (include/uapi/linux/bpf.h,
// if_ether.h), so the object depends only on this file and the clang version.
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))

// The target is little-endian BPF (bpfel), like the hosts it runs on.
#define htons(x) ((__u16)__builtin_bswap16(x))
#define htonl(x) ((__u32)__builtin_bswap32(x))

#define XDP_PASS 2
#define BPF_MAP_TYPE_ARRAY 2
#define BPF_MAP_TYPE_XSKMAP 17
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ETH_P_IPV6 0x86DD

struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

struct ethhdr {
	__u8 h_dest[6];
	__u8 h_source[6];
	__u16 h_proto;
};

// Helper 51 (include/uapi/linux/bpf.h, FN(redirect_map)); the low bits of `flags` are the
// action taken when the slot is empty (since Linux 5.3).
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)51;
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;

// The legacy map definition that loaders (aya, libbpf) read from the "maps" section.
struct bpf_map_def {
	__u32 type;
	__u32 key_size;
	__u32 value_size;
	__u32 max_entries;
	__u32 map_flags;
};

// What to steal; written by userspace before the program is attached. All in network order.
struct steer_cfg {
	__u32 flags;   // bit 0: ipv4 is set; bit 1: ipv6 is set
	__u32 ipv4;
	__u32 ipv6[4];
};

#define CFG_V4 1
#define CFG_V6 2
#define MAX_QUEUES 64

struct bpf_map_def SEC("maps") xsks = {
	.type = BPF_MAP_TYPE_XSKMAP,
	.key_size = 4,
	.value_size = 4,
	.max_entries = MAX_QUEUES,
};

struct bpf_map_def SEC("maps") steer = {
	.type = BPF_MAP_TYPE_ARRAY,
	.key_size = 4,
	.value_size = sizeof(struct steer_cfg),
	.max_entries = 1,
};

struct arp_ipv4 {
	__u16 htype, ptype;
	__u8 hlen, plen;
	__u16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

static __always_inline int ours(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 key = 0;
	struct steer_cfg *cfg;

	if ((void *)(eth + 1) > end)
		return 0;
	cfg = bpf_map_lookup_elem(&steer, &key);
	if (!cfg)
		return 0;
	if (eth->h_proto == htons(ETH_P_ARP)) {
		struct arp_ipv4 *arp = (void *)(eth + 1);
		__u32 tpa;

		if ((void *)(arp + 1) > end || !(cfg->flags & CFG_V4))
			return 0;
		__builtin_memcpy(&tpa, arp->tpa, 4);
		return tpa == cfg->ipv4;
	}
	if (eth->h_proto == htons(ETH_P_IP)) {
		__u8 *ip = (void *)(eth + 1);
		__u32 dst;

		if ((void *)(ip + 20) > end || !(cfg->flags & CFG_V4))
			return 0;
		__builtin_memcpy(&dst, ip + 16, 4);
		return dst == cfg->ipv4;
	}
	if (eth->h_proto == htons(ETH_P_IPV6)) {
		__u8 *ip = (void *)(eth + 1);
		__u32 d[4];

		if ((void *)(ip + 40) > end || !(cfg->flags & CFG_V6))
			return 0;
		__builtin_memcpy(d, ip + 24, 16);
		if (d[0] == cfg->ipv6[0] && d[1] == cfg->ipv6[1] && d[2] == cfg->ipv6[2] &&
		    d[3] == cfg->ipv6[3])
			return 1;
		// ff02::1:ffXX:XXXX, the solicited-node group of the address (RFC 4291 §2.7.1):
		// neighbour solicitations for it.
		return d[0] == htonl(0xff020000) && d[1] == 0 &&
		       d[2] == htonl(1) &&
		       d[3] == ((cfg->ipv6[3] & htonl(0x00ffffff)) |
				htonl(0xff000000));
	}
	return 0;
}

SEC("xdp")
int xsk_steer(struct xdp_md *ctx)
{
	if (!ours(ctx))
		return XDP_PASS;
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

char _license[] SEC("license") = "Dual MIT/GPL";
