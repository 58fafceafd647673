// Read-token login, for servers started with --read-token-file (web/server/auth.py).
//
// When the API answers 401, the page asks for the token once, POSTs it to /api/v1/session and
// retries. The server answers with an HttpOnly, SameSite=Strict cookie, so no script keeps the token
// afterwards, every same-origin fetch and download link carries it, and other sites' requests do not.
// Concurrent 401s share one prompt, and a refused or cancelled login is not asked again on this page
// load (later requests keep their 401 and the page says so; reloading asks again). A server without
// read tokens never answers 401: nothing changes.

let pending = null;
let refused = false;

async function login(api) {
  const token = window.prompt("This podflame server needs a read token (a line of its --read-token-file; in Kubernetes the podflame-tokens Secret's key `read`):");
  if (!token) return false;
  const resp = await fetch(`${api}/session`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: token.trim() }),
  });
  return resp.ok;
}

// fetch(url, init), logging in once on a 401 and retrying; `first`: that fetch, when already started.
export async function fetchWithLogin(url, init, api, first = null) {
  const resp = await (first || fetch(url, init));
  if (resp.status !== 401 || refused) return resp;
  if (!pending) {
    pending = login(api).then((ok) => { refused = !ok; return ok; }).finally(() => { pending = null; });
  }
  return (await pending) ? fetch(url, init) : resp;
}
