"""The kernel side: load rules into network namespaces, keep them current, clean them up.

netns (tools and read-back), apply (one-shot and incremental apply with a record),
proxier (incremental syncs), ownership (what we installed), drift, nslock (one apply at a
time), conntrack / ctnetlink (stale entries over netlink)."""
