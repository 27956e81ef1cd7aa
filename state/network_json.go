package state

import "encoding/json"

// networkJSON is Network as stored and as shown by Mynet.State. The
// anti-spoofing flag keeps the key and the polarity it always had on disk,
// "SpoofingAllowed", omitted when false: a record written before the
// option existed has no key and must keep its filter, and an older mynet
// reading a newer file, or a client of Mynet.State, sees what it always
// saw. In Go there is one polarity, Network.AntiSpoofing.
type networkJSON struct {
	networkFields
	SpoofingAllowed bool `json:",omitempty"`
}

// networkFields has Network's fields without its methods, so that
// encoding it does not recurse.
type networkFields Network

// MarshalJSON writes AntiSpoofing as the inverse key SpoofingAllowed.
func (n Network) MarshalJSON() ([]byte, error) {
	return json.Marshal(networkJSON{networkFields(n), !n.AntiSpoofing})
}

// UnmarshalJSON reads SpoofingAllowed into AntiSpoofing; a missing key
// protects.
func (n *Network) UnmarshalJSON(b []byte) error {
	var j networkJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*n = Network(j.networkFields)
	n.AntiSpoofing = !j.SpoofingAllowed
	return nil
}
