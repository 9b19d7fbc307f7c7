//! Links, addresses and routes over rtnetlink.
