//! What is sent: the endpoint of a prompt, the JSON body of a request and the [`Prepared`]
//! request (body serialized, prompt hashed) that the driver builds before the clock starts.

use bytes::Bytes;
use serde::Serialize;
use workload::{ChatMessage, Prompt, Request};

use super::Client;
use crate::config::Api;

/// The endpoint a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Completions,
    Chat,
}

impl Endpoint {
    /// Its path under the server's root.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

impl Client {
    /// Where `prompt` goes under the configured [`Api`], or why it cannot be sent.
    pub(crate) fn endpoint(api: Api, prompt: &Prompt) -> Result<Endpoint, &'static str> {
        match (api, prompt) {
            (Api::Auto | Api::Completions, Prompt::Tokens(_) | Prompt::Text(_)) => Ok(Endpoint::Completions),
            (Api::Auto | Api::Chat, Prompt::Chat(_)) | (Api::Chat, Prompt::Text(_)) => Ok(Endpoint::Chat),
            (Api::Completions, Prompt::Chat(_)) => {
                Err("a chat prompt cannot go to /v1/completions (use the chat API)")
            }
            (Api::Chat, Prompt::Tokens(_)) => {
                Err("a token-ID prompt cannot go to /v1/chat/completions (use the completions API)")
            }
        }
    }

    /// The JSON body of `req`. The plan was validated, so the endpoint is known to exist.
    pub(crate) fn body(&self, req: &Request) -> Vec<u8> {
        let endpoint = Client::endpoint(self.api, &req.prompt).unwrap_or(Endpoint::Completions);
        let (prompt, messages) = match (&req.prompt, endpoint) {
            (Prompt::Tokens(t), _) => (Some(PromptField::Tokens(t)), None),
            (Prompt::Text(t), Endpoint::Completions) => (Some(PromptField::Text(t)), None),
            (Prompt::Text(t), Endpoint::Chat) => {
                (None, Some(Messages::User([UserMessage { role: "user", content: t }])))
            }
            (Prompt::Chat(m), _) => (None, Some(Messages::Chat(m))),
        };
        // OpenAI's end-user id names the conversation, for engines that evict by it.
        let user = req.meta.session.map(|s| format!("session-{s}"));
        let body = Body {
            model: &self.model,
            prompt,
            messages,
            max_tokens: req.max_tokens,
            min_tokens: self.send_min_tokens.then_some(req.max_tokens),
            ignore_eos: self.ignore_eos.then_some(true),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
                continuous_usage_stats: self.continuous_usage,
            },
            user,
        };
        // Serializing plain structs, string slices and integers into a Vec cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// A request ready to go: its body serialized and its prompt hashed when the run was prepared,
/// so that nothing of it is computed on the path that takes timestamps.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) id: u64,
    pub(crate) endpoint: Endpoint,
    /// What goes on the wire, made before the clock: for the HTTP/1.1 client the whole request
    /// (head and body), else the JSON body alone; the body is `wire[body_at..]`.
    wire: Bytes,
    body_at: usize,
    pub(crate) max_tokens: u32,
    /// A token-ID prompt's length: the prompt tokens when the server reports none.
    pub(crate) known_prompt_tokens: Option<u32>,
    pub(crate) session: Option<u64>,
    pub(crate) turn: Option<u32>,
    /// The record's `prompt_blocks`.
    pub(crate) blocks: Vec<u64>,
}

impl Prepared {
    pub(crate) fn new(client: &Client, req: &Request) -> Prepared {
        let endpoint = Client::endpoint(client.api, &req.prompt).unwrap_or(Endpoint::Completions);
        let body = client.body(req);
        let (wire, body_at) = match &client.h1 {
            Some(h1) => {
                let auth = client.auth.as_ref().map(reqwest::header::HeaderValue::as_bytes);
                let request = h1.render("POST", endpoint.path(), auth, Some(&body));
                let at = request.len() - body.len();
                (Bytes::from(request), at)
            }
            None => (Bytes::from(body), 0),
        };
        Prepared {
            id: req.id,
            endpoint,
            wire,
            body_at,
            max_tokens: req.max_tokens,
            known_prompt_tokens: match req.prompt {
                Prompt::Tokens(_) => Some(req.prompt_len),
                Prompt::Text(_) | Prompt::Chat(_) => None,
            },
            session: req.meta.session,
            turn: req.meta.turn,
            blocks: prompt_blocks(&req.prompt),
        }
    }
}

impl Prepared {
    /// The JSON body.
    pub(crate) fn body(&self) -> Bytes {
        self.wire.slice(self.body_at..)
    }

    /// The whole HTTP/1.1 request, where it was rendered for the HTTP/1.1 client.
    pub(crate) fn h1_request(&self) -> Option<&[u8]> {
        (self.body_at > 0).then_some(&self.wire[..])
    }
}

/// The prompt's chained 16-token block hashes, as the cache simulator replays them: token ids as
/// they are; text and chat content as one token per byte (the emulator's tokenizer).
fn prompt_blocks(prompt: &Prompt) -> Vec<u64> {
    let tokens: Vec<u32> = match prompt {
        Prompt::Tokens(t) => t.clone(),
        Prompt::Text(t) => t.bytes().map(u32::from).collect(),
        Prompt::Chat(messages) => {
            messages.iter().flat_map(|m| m.role.bytes().chain(m.content.bytes())).map(u32::from).collect()
        }
    };
    kvcache::block_hashes(&kvcache::HashConfig::default(), &tokens, None).into_iter().map(|h| h.0).collect()
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<PromptField<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Messages<'a>>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignore_eos: Option<bool>,
    stream: bool,
    stream_options: StreamOptions,
    /// The request's session, when the plan has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PromptField<'a> {
    Tokens(&'a [u32]),
    Text(&'a str),
}

#[derive(Serialize)]
#[serde(untagged)]
enum Messages<'a> {
    Chat(&'a [ChatMessage]),
    User([UserMessage<'a>; 1]),
}

#[derive(Serialize)]
struct UserMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    continuous_usage_stats: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Caps;
    use crate::config::LoadgenConfig;

    fn body_of(api: Api, prompt: Prompt, cfg: impl FnOnce(&mut LoadgenConfig)) -> String {
        body_with(api, prompt, Default::default(), cfg)
    }

    fn body_with(
        api: Api,
        prompt: Prompt,
        meta: workload::RequestMeta,
        cfg: impl FnOnce(&mut LoadgenConfig),
    ) -> String {
        let mut c = LoadgenConfig::new("http://127.0.0.1:1");
        c.api = api;
        cfg(&mut c);
        let client = Client {
            http: reqwest::Client::new(),
            h1: None,
            completions_url: String::new(),
            chat_url: String::new(),
            model: "m".into(),
            api: c.api,
            auth: None,
            request_timeout: c.request_timeout,
            stall_timeout: c.stall_timeout,
            caps: Caps::of(&c),
            ignore_eos: c.ignore_eos,
            send_min_tokens: c.send_min_tokens,
            continuous_usage: c.continuous_usage,
            stop: None,
        };
        let req =
            Request { id: 0, prompt, prompt_len: 3, max_tokens: 4, send_at: None, depends_on: None, meta };
        String::from_utf8(client.body(&req)).unwrap()
    }

    #[test]
    fn bodies() {
        insta::assert_snapshot!(body_of(Api::Auto, Prompt::Tokens(vec![1, 2, 3]), |_| ()), @r#"{"model":"m","prompt":[1,2,3],"max_tokens":4,"min_tokens":4,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#);
        insta::assert_snapshot!(body_of(Api::Completions, Prompt::Text("a\"b".into()), |c| {
            c.ignore_eos = false;
            c.send_min_tokens = false;
            c.continuous_usage = true;
        }), @r#"{"model":"m","prompt":"a\"b","max_tokens":4,"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#);
        insta::assert_snapshot!(body_of(Api::Chat, Prompt::Text("hi".into()), |_| ()), @r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4,"min_tokens":4,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#);
        insta::assert_snapshot!(body_of(Api::Auto, Prompt::Chat(vec![ChatMessage { role: "system".into(), content: "s".into() }, ChatMessage { role: "user".into(), content: "u".into() }]), |_| ()), @r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}],"max_tokens":4,"min_tokens":4,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}"#);
        // A request of a session names it in OpenAI's `user` field.
        let meta = workload::RequestMeta { session: Some(7), turn: Some(2), ..Default::default() };
        insta::assert_snapshot!(body_with(Api::Auto, Prompt::Tokens(vec![1]), meta, |_| ()), @r#"{"model":"m","prompt":[1],"max_tokens":4,"min_tokens":4,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true},"user":"session-7"}"#);
    }

    #[test]
    fn endpoints() {
        let tokens = Prompt::Tokens(vec![1]);
        let text = Prompt::Text("t".into());
        let chat = Prompt::Chat(vec![]);
        assert_eq!(Client::endpoint(Api::Auto, &tokens), Ok(Endpoint::Completions));
        assert_eq!(Client::endpoint(Api::Auto, &text), Ok(Endpoint::Completions));
        assert_eq!(Client::endpoint(Api::Auto, &chat), Ok(Endpoint::Chat));
        assert_eq!(Client::endpoint(Api::Chat, &text), Ok(Endpoint::Chat));
        assert!(Client::endpoint(Api::Chat, &tokens).is_err());
        assert!(Client::endpoint(Api::Completions, &chat).is_err());
    }
}
