package bridge

// InstanceChains names the iptables chains an instance (serve --name) owns,
// by table, the way its dataplane creates them: `mynet doctor` reads them
// without a Dataplane.
func InstanceChains(instance string) (filter, nat []string) {
	c := chainsFor(instance)
	for _, tc := range c.tables() {
		if tc.table == tableNAT {
			nat = append(nat, tc.chain)
		} else {
			filter = append(filter, tc.chain)
		}
	}
	return filter, nat
}
