package bridge

import (
	"context"
	"errors"

	"github.com/mynet/mynet/internal/model"
)

// RemoveOrphans deletes links and rules tagged with this instance whose
// network or endpoint is not in keep: leftovers of a crash, or of deletes
// the engine never sent. Objects of other instances are not touched.
func (d *Dataplane) RemoveOrphans(ctx context.Context, networks, endpoints map[string]bool) error {
	var errs []error
	links, err := d.linkList()
	if err != nil {
		return err
	}
	for _, l := range links {
		kind, id, ok := d.parseTag(l.Attrs().Alias)
		if !ok || (kind == "net" && networks[id]) || (kind == "ep" && endpoints[id]) {
			continue
		}
		if err := stopped(ctx, "removing orphaned link "+l.Attrs().Name); err != nil {
			return errors.Join(append(errs, err)...)
		}
		d.log.Info("removing orphaned link", "link", l.Attrs().Name, "kind", kind, "id", model.Short(id))
		if err := d.removeLink(l.Attrs().Name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := stopped(ctx, "removing orphaned rules"); err != nil {
		return errors.Join(append(errs, err)...)
	}
	errs = append(errs, d.forAll(func(fw firewall) error { return fw.removeOrphans(networks, endpoints) }))
	// An empty table stays while networks do (see RemoveSpoofCheck).
	errs = append(errs, d.removeSpoofOrphans(endpoints, len(networks) == 0))
	return errors.Join(errs...)
}
