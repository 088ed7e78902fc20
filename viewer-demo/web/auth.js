// An access token for a server with authentication on. Open the demo as /viewer-demo/?token=... (an OIDC
// access token or an API key): the token is kept in this tab's sessionStorage, taken out of the address bar
// (so it is neither bookmarked nor shared by copying the URL), and sent as `Authorization: Bearer` with every
// request this page makes to the DICOMweb root.

const KEY = 'dicomweb-access-token';

export function installToken(root) {
  const url = new URL(location.href);
  const given = url.searchParams.get('token');
  if (given) {
    sessionStorage.setItem(KEY, given);
    url.searchParams.delete('token');
    history.replaceState(history.state, '', url);
  }
  const token = sessionStorage.getItem(KEY);
  if (!token) return false;
  const base = new URL(root.endsWith('/') ? root : `${root}/`, location.href).href;
  const plain = window.fetch.bind(window);
  window.fetch = (input, init = {}) => {
    const target = new URL(typeof input === 'string' || input instanceof URL ? input : input.url, location.href).href;
    if (target.startsWith(base) || `${target}/` === base) {
      const headers = new Headers(init.headers || (input instanceof Request ? input.headers : {}));
      if (!headers.has('Authorization')) headers.set('Authorization', `Bearer ${token}`);
      return plain(input, { ...init, headers });
    }
    return plain(input, init);
  };
  return true;
}
