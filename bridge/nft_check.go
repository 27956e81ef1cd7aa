package bridge

import (
	"fmt"
	"log/slog"
	"slices"

	"github.com/mynet/mynet/internal/model"
)

// NFTGap is one thing an instance's nftables table lacks, or holds
// otherwise than mynet builds it, for `mynet doctor`. Network is the ID of
// the network it belongs to, "" for what all networks share.
type NFTGap struct {
	Network string
	What    string
}

// NFTGaps compares the instance's table of one family with what the
// networks and the endpoints' ports want, as ensureAll does before it
// writes, and only reads: it names each shared set or chain missing or
// not as built, each network chain whose rules are not the wanted ones,
// and each element (a network's map entry, a published port) missing or
// wrong. With no network of the family it compares nothing. It runs in
// the calling thread's network namespace.
func NFTGaps(instance string, v6 bool, networks []model.Network, endpoints []model.Endpoint) ([]NFTGap, error) {
	f := newNFTFirewall(instance, v6, slog.New(slog.DiscardHandler))
	if f.err != nil {
		return nil, f.err
	}
	defer f.close()
	o := f.objs()
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.want(o, networks, endpoints)
	if len(w.chains) == 0 && len(w.ports) == 0 {
		return nil, nil
	}
	st, err := f.read(o, nftSetOrder)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.tableName(), err)
	}
	if !st.exists {
		return []NFTGap{{What: "table " + f.tableName() + " is missing: no rule of any network is in place"}}, nil
	}
	rules, err := f.dumpRules(o, false)
	if err != nil {
		return nil, err
	}
	var gaps []NFTGap
	for _, name := range nftSetOrder {
		if _, ok := st.elems[name]; !ok {
			gaps = append(gaps, NFTGap{What: "set " + name + " is missing"})
		}
	}
	base := o.baseRules()
	for _, name := range nftChainOrder {
		want := base[name]
		if !st.chains[name] {
			gaps = append(gaps, NFTGap{What: "chain " + name + " is missing"})
		} else if !slices.Equal(dumpedTags(rules[name]), tagsOf(want)) {
			gaps = append(gaps, NFTGap{What: "chain " + name + " does not hold the rules mynet builds"})
		}
	}
	for _, ch := range w.chains {
		switch {
		case !st.chains[ch.name]:
			gaps = append(gaps, NFTGap{Network: w.netOf[ch.name], What: "chain " + ch.name + " is missing"})
		case !slices.Equal(dumpedTags(rules[ch.name]), w.tags[ch.name]):
			gaps = append(gaps, NFTGap{Network: w.netOf[ch.name], What: "chain " + ch.name + " does not hold the rules mynet builds"})
		}
	}
	add, _ := elemDiff(st, append(w.elems, w.ports...))
	for _, e := range add {
		nid, _, _ := model.ParseRuleComment("comment " + e.comment)
		gaps = append(gaps, NFTGap{Network: nid, What: fmt.Sprintf("element %s of set %s (%s) is missing or wrong", e.text, e.set, e.comment)})
	}
	return gaps, nil
}
