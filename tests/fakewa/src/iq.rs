//! Answers to the IQs a logged-in client sends. Shapes follow the response parsers in
//! `wacore::iq::*`; where an empty `<iq type=result/>` is all the parser needs, that is what
//! the client gets.

use anyhow::{Context, anyhow};
use whatsapp_rust::wacore::iq::prekeys::PreKeyBundleUserNode;
use whatsapp_rust::wacore::libsignal::protocol::PreKeyBundle;
use whatsapp_rust::wacore::protocol::ProtocolNode as _;
use whatsapp_rust::wacore_binary::builder::NodeBuilder;
use whatsapp_rust::wacore_binary::{Jid, Node, NodeContent, NodeRef, Server};

use crate::noise::now_secs;
use crate::pairing::{self, AdvAccount};
use crate::signal::DeviceKeys;
use crate::state::{PairedAccount, Shared, lid_user};

pub(crate) fn server_jid() -> Jid {
    Jid::new("", Server::Pn)
}

/// `<iq type=result from=s.whatsapp.net id=…>` to be completed with children.
pub(crate) fn result(id: &str) -> NodeBuilder {
    NodeBuilder::new("iq")
        .attr("from", server_jid())
        .attr("type", "result")
        .attr("id", id.to_string())
}

pub(crate) fn error(id: &str, code: u16, text: &str) -> Node {
    NodeBuilder::new("iq")
        .attr("from", server_jid())
        .attr("type", "error")
        .attr("id", id.to_string())
        .children([NodeBuilder::new("error")
            .attr("code", code.to_string())
            .attr("text", text.to_string())
            .build()])
        .build()
}

pub(crate) fn attr(node: &Node, key: &str) -> Option<String> {
    node.attrs.get(key).map(|v| v.as_str().into_owned())
}

pub(crate) fn jid_attr(node: &Node, key: &str) -> Option<Jid> {
    node.attrs.get(key).and_then(|v| v.to_jid())
}

pub(crate) fn content_bytes(node: &Node) -> Option<&[u8]> {
    match &node.content {
        Some(NodeContent::Bytes(b)) => Some(b),
        Some(NodeContent::String(s)) => Some(s.as_bytes()),
        _ => None,
    }
}

fn ref_child_bytes<'a>(node: &'a NodeRef<'_>, tag: &str) -> Option<&'a [u8]> {
    node.get_optional_child(tag)
        .and_then(NodeRef::content_bytes)
}

pub(crate) fn ref_attr<'a>(node: &'a NodeRef<'_>, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    node.get_attr(key).map(|v| v.as_str())
}

fn be_uint(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
}

fn key32(bytes: Option<&[u8]>, what: &str) -> anyhow::Result<[u8; 32]> {
    bytes
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow!("{what} missing or not 32 bytes"))
}

/// `<usync>`: device lists (our paired accounts list their companion, contacts only a phone),
/// `contact type=in` for number lookups, and the LID of our own accounts.
pub(crate) async fn usync(shared: &Shared, id: &str, iq: &Node) -> anyhow::Result<Node> {
    let request = iq
        .get_optional_child("usync")
        .ok_or_else(|| anyhow!("usync IQ without <usync>"))?;
    let protocols: Vec<String> = request
        .get_optional_child("query")
        .and_then(Node::children)
        .map(|c| c.iter().map(|n| n.tag.to_string()).collect())
        .unwrap_or_default();
    let mut users = Vec::new();
    if let Some(list) = request.get_optional_child("list") {
        for user in list.get_children_by_tag("user") {
            let (jid, number) = if let Some(jid) = jid_attr(user, "jid") {
                (jid.to_non_ad(), None)
            } else if let Some(contact) = user.get_optional_child("contact").and_then(content_bytes)
            {
                let text = String::from_utf8_lossy(contact).to_string();
                let digits: String = text.chars().filter(char::is_ascii_digit).collect();
                if digits.is_empty() {
                    continue;
                }
                (Jid::pn(digits), Some(text))
            } else {
                continue;
            };
            users.push(user_result(shared, &jid, number, &protocols)?);
        }
    }
    let mut out = NodeBuilder::new("usync");
    for key in ["sid", "mode", "context", "index", "last"] {
        if let Some(v) = attr(request, key) {
            out = out.attr(key, v);
        }
    }
    let out = out
        .children([NodeBuilder::new("list").children(users).build()])
        .build();
    Ok(result(id).children([out]).build())
}

fn user_result(
    shared: &Shared,
    jid: &Jid,
    number: Option<String>,
    protocols: &[String],
) -> anyhow::Result<Node> {
    let account = shared.account_of(&jid.user, jid.is_lid());
    let mut children = Vec::new();
    for protocol in protocols {
        match protocol.as_str() {
            "devices" => children.push(devices_node(shared, account.as_ref())?),
            "contact" => {
                let mut contact = NodeBuilder::new("contact").attr("type", "in");
                if let Some(n) = &number {
                    contact = contact.string_content(n.as_str());
                }
                children.push(contact.build());
            }
            "lid" => {
                if let Some(a) = &account {
                    children.push(
                        NodeBuilder::new("lid")
                            .attr("val", Jid::lid(lid_user(&a.phone)))
                            .build(),
                    );
                }
            }
            // Business, status, picture… are optional in the parser; say nothing.
            _ => {}
        }
    }
    Ok(NodeBuilder::new("user")
        .attr("jid", jid.clone())
        .children(children)
        .build())
}

fn devices_node(shared: &Shared, account: Option<&PairedAccount>) -> anyhow::Result<Node> {
    let primary = NodeBuilder::new("device").attr("id", "0").build();
    let Some(account) = account else {
        // A fake contact: just its phone.
        return Ok(NodeBuilder::new("devices")
            .children([NodeBuilder::new("device-list").children([primary]).build()])
            .build());
    };
    let companion = NodeBuilder::new("device")
        .attr("id", account.device_id.to_string())
        .attr("key-index", account.key_index.to_string())
        .build();
    let party = shared.party(&account.phone)?;
    let key_index_list = pairing::signed_key_index_list(
        &AdvAccount {
            primary: &party.identity,
            raw_id: account.raw_id,
            key_index: account.key_index,
            timestamp: account.paired_at,
        },
        vec![account.key_index],
    )?;
    Ok(NodeBuilder::new("devices")
        .children([
            NodeBuilder::new("device-list")
                .children([primary, companion])
                .build(),
            NodeBuilder::new("key-index-list")
                .attr("ts", account.paired_at.to_string())
                .bytes(key_index_list)
                .build(),
        ])
        .build())
}

/// `<iq xmlns=encrypt type=get><key><user jid=…/>…` — pre-key bundles. Contacts and the primary
/// phones of our accounts get a fresh one-time pre-key per request; anything else is a 404 for
/// that one device, as the real server does.
pub(crate) async fn prekey_bundles(shared: &Shared, id: &str, key: &Node) -> anyhow::Result<Node> {
    let mut users = Vec::new();
    for user in key.get_children_by_tag("user") {
        let Some(jid) = jid_attr(user, "jid") else {
            continue;
        };
        users.push(bundle_for(shared, &jid).await.unwrap_or_else(|e| {
            tracing::debug!("no pre-key bundle for {jid}: {e:#}");
            NodeBuilder::new("user")
                .attr("jid", jid.clone())
                .children([NodeBuilder::new("error")
                    .attr("code", "404")
                    .attr("text", "item-not-found")
                    .build()])
                .build()
        }));
    }
    Ok(result(id)
        .children([NodeBuilder::new("list").children(users).build()])
        .build())
}

async fn bundle_for(shared: &Shared, jid: &Jid) -> anyhow::Result<Node> {
    if jid.device != 0 {
        // Only primaries have public bundles here; our companions never ask for each other.
        anyhow::bail!("device {} has no published bundle", jid.device);
    }
    let phone = if jid.is_lid() {
        shared
            .account_of(&jid.user, true)
            .map(|a| a.phone)
            .ok_or_else(|| anyhow!("unknown LID"))?
    } else if jid.server == Server::Pn {
        jid.user.to_string()
    } else {
        anyhow::bail!("not a user JID");
    };
    if phone.is_empty() || !phone.bytes().all(|b| b.is_ascii_digit()) {
        anyhow::bail!("not a phone number");
    }
    let party = shared.party(&phone)?;
    let bundle = party.inner.lock().await.fresh_bundle(0)?;
    Ok(PreKeyBundleUserNode::from_bundle(jid.clone(), &bundle, None)?.into_node())
}

/// The companion's pre-key upload: registration id, identity, signed pre-key, one-time keys.
/// A one-time pre-key as uploaded: id and public key.
pub(crate) type OneTimeKey = (u32, [u8; 32]);

/// Read from the borrowed stanza: with hundreds of keys it is the largest one a client sends.
pub(crate) fn parse_prekey_upload(
    iq: &NodeRef<'_>,
) -> anyhow::Result<(DeviceKeys, Vec<OneTimeKey>)> {
    let registration_id = ref_child_bytes(iq, "registration")
        .map(be_uint)
        .ok_or_else(|| anyhow!("upload without <registration>"))?;
    let identity = key32(ref_child_bytes(iq, "identity"), "<identity>")?;
    let skey = iq
        .get_optional_child("skey")
        .ok_or_else(|| anyhow!("upload without <skey>"))?;
    let (signed_id, signed_public, signed_signature) = parse_skey(skey)?;
    let mut one_time = Vec::new();
    if let Some(list) = iq.get_optional_child("list") {
        for key in list.get_children_by_tag("key") {
            let id = ref_child_bytes(key, "id")
                .map(be_uint)
                .context("pre-key without id")?;
            let value = key32(ref_child_bytes(key, "value"), "pre-key value")?;
            one_time.push((id, value));
        }
    }
    Ok((
        DeviceKeys {
            registration_id,
            identity,
            signed_id,
            signed_public,
            signed_signature,
        },
        one_time,
    ))
}

pub(crate) fn parse_skey(skey: &NodeRef<'_>) -> anyhow::Result<(u32, [u8; 32], Vec<u8>)> {
    let id = ref_child_bytes(skey, "id")
        .map(be_uint)
        .ok_or_else(|| anyhow!("<skey> without id"))?;
    let public = key32(ref_child_bytes(skey, "value"), "signed pre-key")?;
    let signature = ref_child_bytes(skey, "signature")
        .filter(|s| s.len() == 64)
        .ok_or_else(|| anyhow!("<skey> signature missing or not 64 bytes"))?
        .to_vec();
    Ok((id, public, signature))
}

/// The key bundle a retry receipt carries (`<registration>` and `<keys>`), if any.
pub(crate) fn retry_bundle(receipt: &Node, device_id: u16) -> Option<PreKeyBundle> {
    let receipt = receipt.as_node_ref();
    let keys = receipt.get_optional_child("keys")?;
    let registration_id = ref_child_bytes(&receipt, "registration").map(be_uint)?;
    let identity = key32(ref_child_bytes(keys, "identity"), "identity").ok()?;
    let (signed_id, signed_public, signed_signature) =
        parse_skey(keys.get_optional_child("skey")?).ok()?;
    let one_time = keys.get_optional_child("key").and_then(|k| {
        Some((
            ref_child_bytes(k, "id").map(be_uint)?,
            key32(ref_child_bytes(k, "value"), "pre-key").ok()?,
        ))
    });
    DeviceKeys {
        registration_id,
        identity,
        signed_id,
        signed_public,
        signed_signature,
    }
    .bundle(device_id, one_time)
    .ok()
}

/// App-state sync: a `critical_block` asked for from scratch gets the push-name genesis patch
/// from `genesis`; everything else is answered as up to date with no patches, which the client
/// records as synced.
pub(crate) fn app_state(id: &str, iq: &Node, mut genesis: impl FnMut() -> Option<Vec<u8>>) -> Node {
    let mut collections = Vec::new();
    let requested = iq
        .get_optional_child("sync")
        .map(|sync| sync.get_children_by_tag("collection").collect::<Vec<_>>())
        .unwrap_or_default();
    for collection in requested {
        let Some(name) = attr(collection, "name") else {
            continue;
        };
        let from_scratch = attr(collection, "return_snapshot").as_deref() == Some("true");
        let mut node = NodeBuilder::new("collection").attr("name", name.clone());
        if from_scratch
            && name == crate::appstate::CRITICAL_BLOCK
            && let Some(patch) = genesis()
        {
            node = node
                .attr("version", "1")
                .children([NodeBuilder::new("patches")
                    .children([NodeBuilder::new("patch").bytes(patch).build()])
                    .build()]);
        }
        collections.push(node.build());
    }
    result(id)
        .children([NodeBuilder::new("sync").children(collections).build()])
        .build()
}

/// Small fixed answers for the rest of the post-login traffic.
pub(crate) fn simple(id: &str, xmlns: &str, iq: &Node) -> Node {
    match xmlns {
        "abt" => result(id)
            .children([NodeBuilder::new("props")
                .attr("protocol", "1")
                .attr("hash", "fakewa")
                .attr("refresh", "86400")
                .build()])
            .build(),
        "w" if iq.get_optional_child("props").is_some() => result(id)
            .children([NodeBuilder::new("props")
                .attr("protocol", "2")
                .attr("hash", "fakewa")
                .build()])
            .build(),
        "blocklist" => result(id)
            .children([NodeBuilder::new("list").build()])
            .build(),
        "privacy" if iq.get_optional_child("privacy").is_some() => result(id)
            .children([NodeBuilder::new("privacy")
                .children(
                    [
                        ("readreceipts", "all"),
                        ("last", "all"),
                        ("online", "all"),
                        ("profile", "all"),
                        ("status", "all"),
                        ("groupadd", "all"),
                        ("calladd", "all"),
                    ]
                    .into_iter()
                    .map(|(name, value)| {
                        NodeBuilder::new("category")
                            .attr("name", name)
                            .attr("value", value)
                            .build()
                    }),
                )
                .build()])
            .build(),
        _ => result(id).build(),
    }
}

/// `<iq xmlns=w:m><media_conn/>`: one media host, this server (plain HTTP behind an https URL; the gateway's
/// test build rewrites loopback https to http).
pub(crate) fn media_conn(id: &str, host: &str) -> Node {
    result(id)
        .children([NodeBuilder::new("media_conn")
            .attr("auth", "fakewa-media-auth")
            .attr("ttl", "3600")
            .attr("auth_ttl", "3600")
            .attr("max_buckets", "12")
            .children([NodeBuilder::new("host")
                .attr("hostname", host)
                .attr("type", "primary")
                .build()])
            .build()])
        .build()
}

/// The server's clock, for `t` attributes.
pub(crate) fn now() -> String {
    now_secs().to_string()
}
